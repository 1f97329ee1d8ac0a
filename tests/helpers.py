"""Small shared test helpers (importable: tests/ is on pytest's pythonpath)."""

from yolo_jax.loss import loss_kwargs
from yolo_jax.spec import DetectionSpec, build_spec


def spec_of(config) -> DetectionSpec:
    """The spec of `config.model` with placeholder class names '0', '1', ...."""
    return build_spec(config.model, [str(i) for i in range(config.model.num_classes)], 'a test')


def loss_kw(config) -> dict:
    """`yolo_loss` keyword arguments for `config` (its model geometry and config.loss)."""
    return loss_kwargs(spec_of(config), config.loss)


def target_params(input_size: int, strides, anchors, num_classes: int, **options):
    """`targets.TargetParams` for the given geometry (placeholder class names) and assignment options."""
    from yolo_jax.data.targets import TargetParams  # noqa: PLC0415  (TensorFlow)

    spec = DetectionSpec(int(input_size), tuple(int(s) for s in strides),
                         tuple(tuple((float(w), float(h)) for w, h in scale) for scale in anchors),
                         tuple(str(i) for i in range(num_classes)))
    return TargetParams(spec, **options)
