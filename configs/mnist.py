"""MNIST detection config, faithful to the TF2 reference (pythonlessons TensorFlow-2.x-YOLOv3).

Variants, selected after a colon:
    configs/mnist.py         the reference's settings: YOLOv3, 416 input, batch 4, 100 epochs (a GPU run), from scratch.
    configs/mnist.py:transfer  the same, fine-tuned from Darknet's COCO YOLOv3 (weights/yolov3.weights) as the
                             reference does (its TRAIN_TRANSFER = True).
    configs/mnist.py:quick   the README's main command: YOLOv3-tiny at 256 px fine-tuned from
                             weights/yolov3-tiny.weights for 10 epochs, validated on an EMA of the weights
                             (VOC mAP@0.5 0.91 at the epoch-6 report, ~5 minutes on 2 CPU cores).
    configs/mnist.py:small   YOLOv3 at width 0.25, 256 px, from scratch, 25 epochs (~25 minutes on 2 CPU cores).
    configs/mnist.py:tiny, :yolov4, :yolov4_tiny   another network (YOLOv4 variants train with Darknet's CIoU
                             box loss; yolov4 also with its iou_thresh assignment); combine, e.g. `:yolov4_tiny,smoke`.

Every field can be overridden on the command line, e.g. `--config.model.input_size=320`.
"""

import ml_collections

from yolo_jax.defaults import apply_variants, default_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """Returns the MNIST config; `variant` is the text after the colon in `--config=configs/mnist.py:quick`."""
    return apply_variants(default_config(), variant, 'configs/mnist.py')  # the reference's MNIST settings
