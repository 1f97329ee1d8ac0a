"""The default config: every field, with the TF2 reference's values (YOLOv3, 416 input, MNIST detection set).

Experiment configs (mnist.py, voc.py, coco.py) start from it and change what differs. Override any field on the
command line, e.g. `--config.train.epochs=5`.
"""

import ml_collections

from yolo_jax.defaults import default_config


def get_config() -> ml_collections.ConfigDict:
    return default_config()
