"""Model factory: `create_model(config.model)` → a Flax module; `init_variables` / `variable_shapes` of it."""

import jax
import jax.numpy as jnp
import ml_collections

from yolo_jax.defaults import NETWORKS
from yolo_jax.errors import ConfigError
from yolo_jax.models.fold import fold_batchnorm
from yolo_jax.models.layers import kernel_initializer
from yolo_jax.models.yolov3 import Darknet53, YOLOv3, YOLOv3Tiny, iter_darknet_layers
from yolo_jax.models.yolov4 import YOLOv4, YOLOv4Tiny

__all__ = [
    'Darknet53', 'YOLOv3', 'YOLOv3Tiny', 'YOLOv4', 'YOLOv4Tiny', 'create_model', 'fold_batchnorm', 'fold_variables',
    'init_variables', 'iter_darknet_layers', 'variable_shapes',
]

# The Flax module of each network in defaults.NETWORKS (the one list of names).
_MODULES = {'yolov3': YOLOv3, 'yolov3_tiny': YOLOv3Tiny, 'yolov4': YOLOv4, 'yolov4_tiny': YOLOv4Tiny}
assert set(_MODULES) == set(NETWORKS), 'every network in defaults.NETWORKS needs its module here'
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# Parameter shapes do not depend on the input size: initialise on a small input (cheap on CPU).
INIT_SIZE = 32


def create_model(
    model_config: ml_collections.ConfigDict,
    *,
    bn_axis_name: str | None = None,
    folded: bool = False,
    freeze: str = 'none',
) -> YOLOv3 | YOLOv4:
    """Builds the network named by `model_config.name` (the one constructor every path uses).

    Geometry (input size, strides, anchors) is checked by the run's `spec.DetectionSpec`; the module needs only
    the class count and the anchors per scale. `bn_axis_name` synchronises BatchNorm statistics across devices
    under pmap (None under jit). `folded=True` builds the inference-only network without BatchNorm whose params
    come from `fold_batchnorm`. `freeze` (config.train.freeze) runs the frozen parts' BatchNorm in inference mode,
    so their statistics stay fixed.
    """
    if model_config.name not in _MODULES:
        raise ConfigError(f'config.model.name: unknown model {model_config.name!r}; expected one of {tuple(NETWORKS)}')
    if model_config.dtype not in _DTYPES:
        raise ConfigError(
            f'config.model.dtype: unknown dtype {model_config.dtype!r}; expected one of {sorted(_DTYPES)}'
        )
    kernel_initializer(model_config.kernel_init)  # ConfigError for an unknown name, before any init
    return _MODULES[model_config.name](
        num_classes=model_config.num_classes,
        num_anchors=len(model_config.anchors[0]),
        width=model_config.width_multiplier,
        bn_momentum=model_config.bn_momentum,
        bn_epsilon=model_config.bn_epsilon,
        bn_axis_name=bn_axis_name,
        dtype=_DTYPES[model_config.dtype],
        folded=folded,
        freeze=freeze,
        kernel_init=model_config.kernel_init,
    )


def fold_variables(model_config: ml_collections.ConfigDict, variables: dict) -> tuple[YOLOv3 | YOLOv4, dict]:
    """(folded model, its variables) from a trained model's {'params', 'batch_stats'}; same outputs, no BN."""
    params = fold_batchnorm(variables['params'], variables['batch_stats'], epsilon=model_config.bn_epsilon)
    return create_model(model_config, folded=True), {'params': params}


def init_variables(model: YOLOv3 | YOLOv4, rng: jax.Array) -> dict:
    """Initial {'params', 'batch_stats'} of `model` (shapes independent of the input size).

    Run eagerly, not jitted: on CPU that is several times faster for a one-off init, and later calls reuse the
    compiled primitives. The values equal a jitted init's up to float rounding of the initialisers (~1e-9).
    """
    return model.init(rng, jnp.zeros((1, INIT_SIZE, INIT_SIZE, 3), jnp.float32), train=False)


def variable_shapes(model: YOLOv3 | YOLOv4) -> dict:
    """{'params', 'batch_stats'} of jax.ShapeDtypeStruct: `init_variables`' structure without computing it."""
    return jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
