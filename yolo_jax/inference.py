"""Loading a trained detector and running it: `load_detector` (model, variables, spec) and the jitted `predict`.

`predict` = forward pass (BatchNorm in inference mode) + post-processing (postprocess.py) in one jitted program;
the letterbox parameters are computed on the host from the original sizes, so nothing inside jit touches TF.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from yolo_jax import checkpointing, model_source
from yolo_jax import postprocess as pp
from yolo_jax.errors import ConfigError
from yolo_jax.models import create_model, fold_variables, variable_shapes
from yolo_jax.spec import DetectionSpec, build_spec


def output_dir(output: str | Path | None, workdir: str | Path | None, mode: str) -> Path:
    """Where `--mode=MODE` writes: `output` if given, else WORKDIR/MODE; created if missing."""
    if output is None:
        if workdir is None:
            raise ConfigError(f'{mode}: pass output= when there is no workdir')
        output = Path(workdir) / mode
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    return output


def _output_classes(shapes: dict, model: Any, num_anchors: int) -> dict[str, int]:
    """{output conv: number of classes its kernel predicts} from a params tree of arrays or metadata (.shape)."""
    out = {}
    for name in model.output_convs:
        try:
            features = int(shapes['head'][name]['kernel'].shape[-1])
        except (KeyError, TypeError, AttributeError):
            continue
        out[name] = features // num_anchors - 5
    return out


def check_num_classes_in_params(
    params: dict, model: Any, model_config: ml_collections.ConfigDict, source: str
) -> None:
    """Raises a ValueError naming both numbers when `params` (arrays or shape metadata) predict a different number
    of classes than config.model.num_classes."""
    num_anchors = len(model_config.anchors[0])
    found = set(_output_classes(params, model, num_anchors).values())
    if found and found != {int(model_config.num_classes)}:
        got = ', '.join(str(c) for c in sorted(found))
        raise ConfigError(
            f'{source} predicts {got} classes but config.model.num_classes={model_config.num_classes}; '
            f'use --config.model.num_classes={got} (and matching config.data.class_names) to load it'
        )


def inference_spec(config: ml_collections.ConfigDict) -> DetectionSpec:
    """The spec of Darknet weights: config.model with the data set's class names (read without building anything);
    config.model.num_classes must agree."""
    return build_spec(config.model, *_class_source(config))


def checkpoint_model_config(config: ml_collections.ConfigDict, meta: dict) -> ml_collections.ConfigDict:
    """config.model as the checkpoint recorded it (network, classes, anchors, BatchNorm epsilon, ...), so eval,
    detect and export need no training flags repeated; config.model itself for checkpoints without the record."""
    saved = meta.get('model')
    if saved is None:
        return config.model
    model = ml_collections.ConfigDict(config.model.to_dict())
    for key, value in saved.items():
        if key in model:
            model[key] = _as_tuples(value)
    return model


def _as_tuples(value: Any) -> Any:
    """JSON lists back to the tuples config.model holds."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _shape_tree(tree: Any) -> dict[str, tuple[int, ...]]:
    return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(np.shape(x))
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_compatible(variables: dict, model: Any, model_config: ml_collections.ConfigDict, source: str,
                     saved_model: dict | None = None) -> None:
    """ConfigError in a few lines when `variables` do not fit `model` (config.model): the differing settings when
    the source recorded its model (`saved_model`), and the first mismatching tensors."""
    want = _shape_tree(variable_shapes(model))
    got = _shape_tree({k: variables[k] for k in ('params', 'batch_stats')})
    if want == got:
        return
    lines = [f'{source} does not fit config.model (name={model_config.name}, num_classes={model_config.num_classes}, '
             f'width_multiplier={model_config.width_multiplier}):']
    if saved_model:
        lines += [f'  config.model.{k}: checkpoint {saved_model[k]!r}, config {model_config[k]!r}'
                  for k in ('name', 'num_classes', 'width_multiplier')
                  if k in saved_model and saved_model[k] != model_config[k]]
    diff = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    lines += [f'  {k}: checkpoint {got.get(k, "missing")}, model {want.get(k, "missing")}' for k in diff[:3]]
    if len(diff) > 3:
        lines.append(f'  ... and {len(diff) - 3} more tensors')
    raise ConfigError('\n'.join(lines))


def load_detector(
    config: ml_collections.ConfigDict, workdir: str | Path | None, weights: str | Path | None = None, *,
    fold: bool,
) -> tuple[Any, dict, DetectionSpec]:
    """(model, variables, spec) for inference: {'params', 'batch_stats'}, or with `fold` the BatchNorm-folded
    model and its {'params'} (same outputs, fewer ops; models.fold_batchnorm). eval/detect pass
    config.eval.fold_batchnorm.

    With `weights`: a Darknet .weights file (yolo_jax.darknet). Otherwise the best checkpoint in
    workdir/checkpoints (lowest validation loss), falling back to the latest: only its params and batch_stats
    are read, so training-only settings (optimizer, clipping, freezing) play no part. Raises FileNotFoundError
    for a missing workdir, checkpoint or weights file, and ConfigError when the weights do not fit config.model.
    """
    if weights:
        model_config = config.model
        model = create_model(model_config)
        path = model_source.check_weights_file(weights)
        from yolo_jax import darknet  # noqa: PLC0415  (optional feature, imported on demand)

        variables = darknet.load_weights(str(path), config.model)
        check_num_classes_in_params(variables['params'], model, config.model, f'Darknet weights {path}')
        variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
        spec = inference_spec(config)
    else:
        model_source.check_workdir(workdir)
        variables, step, meta = checkpointing.load_model(workdir, f'--workdir={workdir}')
        source = f'checkpoint {Path(workdir) / "checkpoints" / str(step)}'
        logging.info('Loaded %s (step %d)', source, step)
        model_config = checkpoint_model_config(config, meta)
        model = create_model(model_config)
        check_compatible(variables, model, model_config, source, meta.get('model'))
        spec = (DetectionSpec.from_json(meta['spec']) if 'spec' in meta
                else build_spec(model_config, *_class_source(config)))
    model, variables = _maybe_fold(fold, model_config, model, variables)
    return model, variables, spec


def load_variables(
    config: ml_collections.ConfigDict, workdir: str | Path | None, weights: str | Path | None = None, *,
    fold: bool,
) -> tuple[Any, dict]:
    """(model, variables) of `load_detector`."""
    model, variables, _ = load_detector(config, workdir, weights, fold=fold)
    return model, variables


def _class_source(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
    from yolo_jax.data import sources  # noqa: PLC0415  (TensorFlow)

    return sources.class_source(config)


def _maybe_fold(fold: bool, model_config: ml_collections.ConfigDict, model: Any, variables: dict) -> tuple[Any, dict]:
    if fold:
        return fold_variables(model_config, variables)
    return model, variables


@functools.lru_cache(maxsize=32)
def make_predict_fn(model: Any, cfg: pp.PostprocessConfig) -> Callable[..., pp.Detections]:
    """jit(forward + post-process) for one (model, settings) pair; cached, so repeated calls reuse the compile.

    The returned fn(variables, images (B, S, S, 3) in [0, 1], resize (B, 4), orig_sizes (B, 2) (h, w)) →
    Detections in original-image pixels.
    """

    def fn(variables: dict, images: jax.Array, resize: jax.Array, orig_sizes: jax.Array) -> pp.Detections:
        # with cfg's test-time views (flipped copies, other sizes), if any
        return pp.predict_views(lambda x: model.apply(variables, x, train=False), images, resize, orig_sizes, cfg)

    return jax.jit(fn)


def predict(
    model: Any,
    variables: dict,
    images: np.ndarray | jax.Array,
    orig_sizes: np.ndarray,
    cfg: pp.PostprocessConfig,
) -> pp.Detections:
    """Detections for a batch of network inputs.

    Args:
      model: the Flax module (create_model(config.model)).
      variables: {'params', 'batch_stats'}.
      images: (B, S, S, 3) float32 RGB in [0, 1], letterboxed (or stretched) as the input pipeline does.
      orig_sizes: (B, 2) original (h, w) of each image, host values (NumPy).
      cfg: post-processing settings (`PostprocessConfig.from_spec`: the detector's spec and config.eval).

    Returns:
      Detections (device arrays): boxes (B, K, 4) xyxy in original pixels, scores, classes, valid;
      K = config.eval.max_detections.
    """
    if images.shape[1:3] != (cfg.input_size, cfg.input_size):
        raise ValueError(f'images are {images.shape[1:3]}, expected the spec\'s input_size={cfg.input_size}')
    sizes = np.asarray(orig_sizes).reshape(-1, 2)
    resize = pp.resize_params_batch(sizes, cfg.input_size, cfg.resize_mode)
    return make_predict_fn(model, cfg)(variables, images, resize, sizes.astype(np.float32))
