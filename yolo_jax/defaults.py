"""Building blocks for configs: published anchors and the `config.model` block.

Config files under `configs/` call these; nothing here reads a config at import time.
"""

import ml_collections

# YOLOv3's anchors in input pixels, one row per scale (strides 8, 16, 32).
YOLOV3_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
# YOLOv3-tiny's anchors as masked in Darknet's yolov3-tiny.cfg (mask 0,1,2 at stride 16; 3,4,5 at 32).
YOLOV3_TINY_ANCHORS = (
    ((10, 14), (23, 27), (37, 58)),
    ((81, 82), (135, 169), (344, 319)),
)


def model_config(name: str = 'yolov3', num_classes: int = 10, input_size: int = 416) -> ml_collections.ConfigDict:
    """The `config.model` block for `name` in {'yolov3', 'yolov3_tiny'}."""
    m = ml_collections.ConfigDict()
    m.name = name
    m.num_classes = num_classes
    m.input_size = input_size
    if name == 'yolov3':
        m.strides = (8, 16, 32)
        m.anchors = YOLOV3_ANCHORS
    elif name == 'yolov3_tiny':
        m.strides = (16, 32)
        m.anchors = YOLOV3_TINY_ANCHORS
    else:
        raise ValueError(f"config.model.name: unknown model {name!r}; expected 'yolov3' or 'yolov3_tiny'")
    # Keras defaults, as the reference uses; Darknet weights want epsilon ~1e-5 (see darknet.py).
    m.bn_momentum = 0.99
    m.bn_epsilon = 1e-3
    m.width_multiplier = 1.0  # scales every layer's channel count (1.0 = the published network)
    m.dtype = 'float32'  # compute dtype; params stay float32
    m.conv_impl = 'xla'  # 'xla' (lax.conv), 'matmul' (every conv as a matmul), 'matmul_1x1' (1x1 convs only)
    return m
