"""PASCAL VOC: train on VOC2007+2012 trainval (16,551 images), evaluate on VOC2007 test (4,952 images) with the
VOC07 protocol (11-point AP@0.5, difficult boxes ignored, the devkit's float boxes).

    python -m yolo_jax.main --config=configs/voc.py --workdir=DIR --config.data.data_dir=TFDS_DIR \
        --config.train.init_from=yolov3.weights

Data: prepared TFDS sets `voc/2007` and `voc/2012` (`tfds build voc/2007 voc/2012 --data_dir=TFDS_DIR`, see
README). Variants after a colon as configs/mnist.py ('tiny', 'quick', 'smoke'), e.g. `configs/voc.py:tiny`.
Every field can be overridden on the command line.
"""

import ml_collections

from yolo_jax.defaults import apply_variants, default_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The VOC config; `variant` as configs/mnist.py's (defaults.VARIANTS, applied after the VOC settings)."""
    config = default_config()
    config.model.num_classes = 20
    config.model.input_size = 416
    config.model.bn_epsilon = 1e-5  # Darknet's: start from the COCO .weights (train.init_from)

    config.data.dataset = 'voc/2007+voc/2012'  # train: both trainval sets; test: voc/2007 test
    config.data.cache = False  # ~9 GB decoded: stream instead
    config.data.check_at_start = False  # a full extra pass over the data; run python -m yolo_jax.data.check
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
    return apply_variants(config, variant, 'configs/voc.py')
