"""The default config: every field, with the TF2 reference's values (YOLOv3, 416 input, MNIST detection set).

Experiment configs (mnist.py, voc.py, coco.py) start from it and change what differs. Variants after a colon as
configs/mnist.py's (defaults.VARIANTS), e.g. `configs/default.py:tiny,smoke`. Override any field on the command
line, e.g. `--config.train.epochs=5`.
"""

import ml_collections

from yolo_jax.defaults import apply_variants, default_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The default config; `variant` is the text after the colon in `--config=configs/default.py:tiny`."""
    return apply_variants(default_config(), variant, 'configs/default.py')
