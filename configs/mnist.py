"""MNIST detection config, faithful to the TF2 reference (pythonlessons TensorFlow-2.x-YOLOv3).

Variants, selected after a colon:
    configs/mnist.py         the reference's settings: YOLOv3, 416 input, batch 4, 100 epochs (a GPU run).
    configs/mnist.py:quick   a small, fast variant that trains on 2 CPU cores in about half an hour.
    configs/mnist.py:tiny, :yolov4, :yolov4_tiny   another network (YOLOv4 variants train with Darknet's CIoU
                             box loss; yolov4 also with its iou_thresh assignment); combine, e.g. `:yolov4_tiny,smoke`.

Every field can be overridden on the command line, e.g. `--config.model.input_size=320`.
"""

import ml_collections

from yolo_jax.defaults import default_config, model_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """Returns the MNIST config; `variant` is the text after the colon in `--config=configs/mnist.py:quick`."""
    config = default_config()  # the reference's MNIST settings are the defaults
    for name in (variant or '').split(','):
        if name not in VARIANTS:
            raise ValueError(f'configs/mnist.py: unknown variant {name!r}; expected a comma-separated subset of '
                             f'{sorted(v for v in VARIANTS if v)}')
        VARIANTS[name](config)
    return config


def _make_quick(config: ml_collections.ConfigDict) -> None:
    """A CPU-sized variant: YOLOv3 at a quarter of its width and 256 px input (~20 img/s on 2 cores), 25 epochs."""
    config.model.input_size = 256
    config.model.width_multiplier = 0.25
    # Thin layers initialised at stddev 0.01 move fast at lr 1e-3: BatchNorm's moving averages lag the weights
    # (validation loss 3-6x the training loss in a trial run). Recompute them at each epoch's end instead.
    config.train.bn_recalibration_batches = 25
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.epochs = 25
    config.train.lr_init = 1e-3
    config.train.lr_end = 1e-5
    config.train.warmup_epochs = 1
    config.train.map_every_epochs = 5
    config.train.log_every_steps = 25


def _switch_model(config: ml_collections.ConfigDict, name: str) -> None:
    """Replaces config.model by `name`'s block, keeping the class count, input size, BN, width and dtype."""
    m = model_config(name, num_classes=config.model.num_classes, input_size=config.model.input_size)
    m.update({k: config.model[k] for k in ('bn_momentum', 'bn_epsilon', 'width_multiplier', 'dtype')})
    config.model = m


def _make_tiny(config: ml_collections.ConfigDict) -> None:
    """YOLOv3-tiny (strides 16, 32) instead of YOLOv3."""
    _switch_model(config, 'yolov3_tiny')


def _make_v4(name: str, iou_thresh: float):
    """A variant for YOLOv4 (`name`='yolov4') or YOLOv4-tiny: the network, Darknet's scale_x_y decoding, the CIoU
    box loss of both cfgs and `iou_thresh` (yolov4.cfg: 0.213; yolov4-tiny.cfg sets none, and Darknet's default
    then assigns the best anchor only: the tiny variant keeps the reference's positive_iou rule instead, set
    `--config.data.iou_thresh=0.9999` for Darknet's)."""

    def make(config: ml_collections.ConfigDict) -> None:
        _switch_model(config, name)
        config.loss.box_loss = 'ciou'
        config.data.iou_thresh = iou_thresh

    return make


def _make_smoke(config: ml_collections.ConfigDict) -> None:
    """Seconds-long runs for tests and smoke checks: a few tiny images, a narrow network, two epochs."""
    config.model.input_size = 64
    config.model.width_multiplier = 0.125
    config.data.num_train = 16
    config.data.num_test = 8
    config.data.shuffle_buffer = 16
    config.train.batch_size = 4
    config.train.eval_batch_size = 4
    config.train.epochs = 2
    config.train.warmup_epochs = 1
    config.train.lr_init = 1e-3
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 2


VARIANTS = {
    '': lambda c: None, 'quick': _make_quick, 'tiny': _make_tiny, 'smoke': _make_smoke,
    'yolov4': _make_v4('yolov4', 0.213), 'yolov4_tiny': _make_v4('yolov4_tiny', 1.0),
}
