"""Small shared test helpers (importable: tests/ is on pytest's pythonpath)."""

from yolo_jax.loss import loss_kwargs
from yolo_jax.spec import DetectionSpec, build_spec


def spec_of(config) -> DetectionSpec:
    """The spec of `config.model` with placeholder class names '0', '1', ...."""
    return build_spec(config.model, [str(i) for i in range(config.model.num_classes)], 'a test')


def loss_kw(config) -> dict:
    """`yolo_loss` keyword arguments for `config` (its model geometry and config.loss)."""
    return loss_kwargs(spec_of(config), config.loss)
