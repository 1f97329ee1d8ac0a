"""Your own labelled photos: point config.data.root at the export of a labelling tool and train.

    python -m yolo_jax.main --config=configs/photos.py --config.data.root=~/data/cells --workdir=runs/cells

config.data.root is a folder (VOC devkit or flat XML, YOLO txt folder with a names file, a folder holding a
data.yaml or one COCO .json) or the data.yaml / .json file itself: the layout is detected and logged
(yolo_jax/data/own_data.py). The number of classes comes from the data (model.num_classes = 0); a set without a
test split is split 80/20 by a hash of the file names, kept in WORKDIR/split.json.

Model: YOLOv3-tiny at 416 px fine-tuned from Darknet's COCO weights, weights/yolov3-tiny.weights (without the
file: from scratch, with a warning). Settings for a few hundred images: batch 8, 30 epochs, lr 1e-3 after a
2-epoch warm-up, an EMA of the weights, BatchNorm statistics recalibrated on 20 batches at each epoch's end, mAP
every 5 epochs.

Variants after a colon (defaults.VARIANTS, applied after these settings): `topdown` (pictures without an "up":
microscope slides, aerial views; each training image also mirrored top-bottom and transposed; BCCD:
experiments/bccd), `smoke` (seconds-long runs at 64 px: tests), `small` (width 0.25 at 256 px, from scratch:
CPU-sized), `quick` (256 px, 10 epochs), `tiny`,
`yolov4_tiny` (transfer from weights/yolov4-tiny.weights), `yolov4`... Darknet's weights exist only for the
published widths: a variant that narrows the network trains it from scratch.
"""

import ml_collections

from yolo_jax.defaults import apply_variants, darknet_weights_path, default_config, model_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The own-photos config; `variant` as configs/mnist.py's."""
    config = default_config()
    config.model = model_config('yolov3_tiny', num_classes=0, input_size=416)  # 0: the data set's class count
    config.model.bn_epsilon = 1e-5  # Darknet's, for its weights
    config.train.init_from = darknet_weights_path('yolov3_tiny')
    config.train.init_from_missing = 'scratch'

    config.data.dataset = 'auto'
    config.data.test_fraction = 0.2
    config.data.shuffle_buffer = 512
    config.data.mosaic = 0.0  # small objects on few photos: full-size images (mosaic shrinks them)

    t = config.train
    t.batch_size = 8
    t.eval_batch_size = 8
    t.epochs = 30  # ~300 images: ~37 steps per epoch, ~1100 updates
    t.warmup_epochs = 2
    t.lr_init = 1e-3
    t.lr_end = 1e-5
    t.ema_decay = 0.995  # averages over ~200 updates
    t.ema_tau = 40.0  # about one epoch of warm-up
    t.bn_recalibration_batches = 20  # COCO's BatchNorm statistics do not fit microscope or product photos
    t.log_every_steps = 10
    t.eval_every_epochs = 1
    t.map_every_epochs = 5
    t.checkpoint_every_steps = 100

    config = apply_variants(config, variant, 'configs/photos.py')
    if config.train.init_from.startswith('weights/'):  # a variant may have switched the network or its width
        published = config.model.width_multiplier == 1.0
        config.train.init_from = darknet_weights_path(config.model.name) if published else ''
    return config
