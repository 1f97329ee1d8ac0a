"""MNIST detection config, faithful to the TF2 reference (pythonlessons TensorFlow-2.x-YOLOv3).

Variants, selected after a colon:
    configs/mnist.py         the reference's settings: YOLOv3, 416 input, batch 4, 100 epochs (a GPU run).
    configs/mnist.py:quick   a small, fast variant that trains on 2 CPU cores in about half an hour.

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


def _make_tiny(config: ml_collections.ConfigDict) -> None:
    """YOLOv3-tiny (strides 16, 32) instead of YOLOv3."""
    m = model_config('yolov3_tiny', num_classes=config.model.num_classes, input_size=config.model.input_size)
    m.update({k: config.model[k] for k in ('bn_momentum', 'bn_epsilon', 'width_multiplier', 'dtype')})
    config.model = m


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


VARIANTS = {'': lambda c: None, 'quick': _make_quick, 'tiny': _make_tiny, 'smoke': _make_smoke}
