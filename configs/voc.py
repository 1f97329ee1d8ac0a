"""PASCAL VOC: train on VOC2007+2012 trainval (16,551 images), evaluate on VOC2007 test (4,952 images) with the
VOC07 protocol (11-point AP@0.5, difficult boxes ignored, the devkit's float boxes).

    python -m yolo_jax.main --config=configs/voc.py --workdir=DIR --config.data.data_dir=TFDS_DIR \
        --config.train.init_from=yolov3.weights

Data: prepared TFDS sets `voc/2007` and `voc/2012` (`tfds build voc/2007 voc/2012 --data_dir=TFDS_DIR`, see
README). Variants after a colon as configs/mnist.py ('tiny', 'quick', 'smoke'), e.g. `configs/voc.py:tiny`.
Every field can be overridden on the command line.
"""

import importlib.util
from pathlib import Path

import ml_collections


def _mnist():
    """configs/mnist.py, loaded by path (this file may be loaded from any working directory)."""
    spec = importlib.util.spec_from_file_location('yolo_jax_configs_mnist', Path(__file__).with_name('mnist.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The VOC config; `variant` as configs/mnist.py's (applied after the VOC settings)."""
    mnist = _mnist()
    config = mnist.get_config()
    config.model.num_classes = 20
    config.model.input_size = 416
    config.model.bn_epsilon = 1e-5  # Darknet's: start from the COCO .weights (train.init_from)

    config.data.dataset = 'voc/2007+voc/2012'  # train: both trainval sets; test: voc/2007 test
    config.data.cache = False  # ~9 GB decoded: stream instead
    config.data.shuffle_buffer = 2048
    config.data.max_boxes = 100  # VOC has at most 42 objects per image

    config.train.batch_size = 16
    config.train.eval_batch_size = 16
    config.train.epochs = 50  # ~52k steps of 16 images, fine-tuning from COCO weights
    config.train.warmup_epochs = 2
    config.train.lr_init = 1e-4
    config.train.lr_end = 1e-6
    config.train.map_every_epochs = 10
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 1000

    config.eval.map_score_threshold = 0.005
    config.eval.map_max_detections = 100
    config.eval.voc_metric = '11_point'  # the VOC2007 test protocol
    config.eval.voc_truncate_boxes = False  # the devkit's float boxes
    config.eval.split = 'test'
    for name in (variant or '').split(','):
        if name not in mnist.VARIANTS:
            raise ValueError(f'configs/voc.py: unknown variant {name!r}; expected a comma-separated subset of '
                             f'{sorted(v for v in mnist.VARIANTS if v)}')
        mnist.VARIANTS[name](config)
    return config
