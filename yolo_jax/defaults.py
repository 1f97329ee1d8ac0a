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
# YOLOv4's anchors (yolov4.cfg: masks 0,1,2 / 3,4,5 / 6,7,8 at strides 8, 16, 32).
YOLOV4_ANCHORS = (
    ((12, 16), (19, 36), (40, 28)),
    ((36, 75), (76, 55), (72, 146)),
    ((142, 110), (192, 243), (459, 401)),
)
# YOLOv4-tiny's anchors as masked in yolov4-tiny.cfg, strides ascending: mask 1,2,3 at stride 16, mask 3,4,5 at
# stride 32 (anchor 3, 81x82, serves both scales).
YOLOV4_TINY_ANCHORS = (
    ((23, 27), (37, 58), (81, 82)),
    ((81, 82), (135, 169), (344, 319)),
)
# Darknet's scale_x_y per scale (strides ascending) of AlexeyAB's yolov4.cfg and yolov4-tiny.cfg.
YOLOV4_SCALE_XY = (1.2, 1.1, 1.05)
YOLOV4_TINY_SCALE_XY = (1.05, 1.05)
MODEL_NAMES = ('yolov3', 'yolov3_tiny', 'yolov4', 'yolov4_tiny')


def model_config(name: str = 'yolov3', num_classes: int = 10, input_size: int = 416) -> ml_collections.ConfigDict:
    """The `config.model` block for `name` in MODEL_NAMES.

    `scale_xy` (one per scale, strides ascending) is Darknet's scale_x_y for decoding box centres
    (yolo_jax/decode.py): 1.0 (plain YOLOv3 decoding) for v3, Darknet's cfg values for v4.
    """
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
    elif name == 'yolov4':
        m.strides = (8, 16, 32)
        m.anchors = YOLOV4_ANCHORS
    elif name == 'yolov4_tiny':
        m.strides = (16, 32)
        m.anchors = YOLOV4_TINY_ANCHORS
    else:
        raise ValueError(f'config.model.name: unknown model {name!r}; expected one of {MODEL_NAMES}')
    scale_xy = {'yolov4': YOLOV4_SCALE_XY, 'yolov4_tiny': YOLOV4_TINY_SCALE_XY}
    m.scale_xy = scale_xy.get(name, (1.0,) * len(m.strides))
    # Keras defaults, as the reference uses; Darknet weights want epsilon ~1e-5 (see darknet.py).
    m.bn_momentum = 0.99
    m.bn_epsilon = 1e-3
    m.width_multiplier = 1.0  # scales every layer's channel count (1.0 = the published network)
    m.dtype = 'float32'  # compute dtype; params stay float32
    m.conv_impl = 'xla'  # 'xla' (lax.conv), 'matmul' (every conv as a matmul), 'matmul_1x1' (1x1 convs only)
    return m
