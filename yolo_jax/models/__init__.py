"""Model factory: `create_model(config.model)` → a Flax module."""

import jax
import jax.numpy as jnp
import ml_collections

from yolo_jax.errors import ConfigError
from yolo_jax.models.fold import fold_batchnorm
from yolo_jax.models.layers import kernel_initializer
from yolo_jax.models.yolov3 import Darknet53, YOLOv3, YOLOv3Tiny, iter_darknet_layers
from yolo_jax.models.yolov4 import YOLOv4, YOLOv4Tiny

__all__ = [
    'Darknet53', 'YOLOv3', 'YOLOv3Tiny', 'YOLOv4', 'YOLOv4Tiny', 'create_model', 'fold_batchnorm', 'fold_variables',
    'init_variables', 'iter_darknet_layers',
]

_MODELS = {'yolov3': YOLOv3, 'yolov3_tiny': YOLOv3Tiny, 'yolov4': YOLOv4, 'yolov4_tiny': YOLOv4Tiny}
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def create_model(
    model_config: ml_collections.ConfigDict,
    *,
    bn_axis_name: str | None = None,
    folded: bool = False,
    freeze: str = 'none',
) -> YOLOv3 | YOLOv4:
    """Builds the network named by `model_config.name`.

    `bn_axis_name` synchronises BatchNorm statistics across devices under pmap (None under jit). `folded=True`
    builds the inference-only network without BatchNorm whose params come from `fold_batchnorm`. `freeze`
    (config.train.freeze) runs the frozen parts' BatchNorm in inference mode, so their statistics stay fixed.
    """
    if model_config.name not in _MODELS:
        raise ConfigError(f'config.model.name: unknown model {model_config.name!r}; expected one of {sorted(_MODELS)}')
    if model_config.dtype not in _DTYPES:
        raise ConfigError(
            f'config.model.dtype: unknown dtype {model_config.dtype!r}; expected one of {sorted(_DTYPES)}'
        )
    num_anchors = {len(a) for a in model_config.anchors}
    if len(num_anchors) != 1 or len(model_config.anchors) != len(model_config.strides):
        raise ConfigError('config.model.anchors: need the same number of anchors at each of the config.model.strides')
    _check_input_size(model_config)
    kernel_initializer(model_config.kernel_init)  # ConfigError for an unknown name, before any init
    return _MODELS[model_config.name](
        num_classes=model_config.num_classes,
        num_anchors=num_anchors.pop(),
        width=model_config.width_multiplier,
        bn_momentum=model_config.bn_momentum,
        bn_epsilon=model_config.bn_epsilon,
        bn_axis_name=bn_axis_name,
        dtype=_DTYPES[model_config.dtype],
        folded=folded,
        freeze=freeze,
        kernel_init=model_config.kernel_init,
    )


def _check_input_size(model_config: ml_collections.ConfigDict) -> None:
    """ConfigError unless config.model.input_size is a positive multiple of 32 (the backbone's total downsampling)
    and of every config.model.strides."""
    size, strides = int(model_config.input_size), tuple(model_config.strides)
    multiple = max(32, *strides)
    if size <= 0 or size % multiple:
        nearest = max(multiple, round(size / multiple) * multiple)
        raise ConfigError(
            f'config.model.input_size={size}: input_size must be a multiple of {multiple} (the network downsamples '
            f'by {multiple}; config.model.strides={strides}), e.g. {nearest}'
        )


def fold_variables(model_config: ml_collections.ConfigDict, variables: dict) -> tuple[YOLOv3 | YOLOv4, dict]:
    """(folded model, its variables) from a trained model's {'params', 'batch_stats'}; same outputs, no BN."""
    params = fold_batchnorm(variables['params'], variables['batch_stats'], epsilon=model_config.bn_epsilon)
    return create_model(model_config, folded=True), {'params': params}


def init_variables(model: YOLOv3 | YOLOv4, rng: jax.Array, input_size: int) -> dict:
    """Initial {'params', 'batch_stats'} for square inputs of side `input_size` (jit-compiled init)."""
    x = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
    return jax.jit(lambda r: model.init(r, x, train=False))(rng)
