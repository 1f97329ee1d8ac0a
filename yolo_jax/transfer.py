"""Initial variables for fine-tuning: `initial_variables(config, model)` when `config.train.init_from` is set.

`init_from` is either
  - a Darknet `.weights` file: read into the same architecture with the class count the file holds (80 for
    the published COCO weights; inferred from the file size), or
  - an orbax checkpoint of a yolo_jax run: a workdir, its `checkpoints/` directory or one step directory
    `checkpoints/<step>`; from a workdir the best checkpoint by validation loss is used (else the latest).

Every convolution of the target model whose name (`backbone/conv_NNN`, `head/conv_NNN`: Darknet's layer
order, not a position in a flat list) and every tensor shape match the source is copied, params and
BatchNorm statistics together; the rest keeps the target's fresh initialisation — with another class count
that is exactly the class-dependent output convolutions (`model.output_convs`). What was copied and what was
skipped, and why, is logged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from yolo_jax import checkpointing, darknet, weights
from yolo_jax.errors import ConfigError, MissingFileError
from yolo_jax.models import init_variables, iter_darknet_layers


def fresh_variables(config: ml_collections.ConfigDict, model: Any) -> dict:
    """A fresh init of `model` from config.train.seed (what training starts from without init_from)."""
    init_rng, _ = jax.random.split(jax.random.key(config.train.seed))
    return init_variables(model, init_rng)


def _layers(variables: dict) -> dict[str, tuple[dict, dict | None]]:
    return {path: (p, s) for path, p, s in iter_darknet_layers(variables)}


def _shapes(layer: tuple[dict, dict | None]) -> dict[str, tuple[int, ...]]:
    """{'conv/kernel': shape, 'bn/scale': ..., 'bn/mean': ...} of one layer's (params, batch_stats)."""
    out = {}
    for tree in layer:
        for keys, x in jax.tree_util.tree_flatten_with_path(tree or {})[0]:
            out['/'.join(str(getattr(k, 'key', k)) for k in keys)] = tuple(np.shape(x))
    return out


def _mismatch(src: tuple[dict, dict | None], dst: tuple[dict, dict | None]) -> str | None:
    """Why the layer `src` cannot be copied into `dst` (None if every tensor's name and shape match)."""
    got, want = _shapes(src), _shapes(dst)
    if got.keys() != want.keys():
        return f'has tensors {sorted(got)}, the target {sorted(want)}'
    diffs = [f'{k} {got[k]} vs {want[k]}' for k in want if got[k] != want[k]]
    return 'shape mismatch (source vs target): ' + ', '.join(diffs) if diffs else None


def plan_transfer(source: dict, target: dict, output_convs: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """One (path, 'copied' | 'skipped', reason) row per convolution of `target`, in Darknet order.

    A layer is copied when the source has a convolution of the same name whose tensors have the same names
    and shapes. Only shapes are read: `target` may be abstract (jax.ShapeDtypeStruct leaves).
    """
    src_layers = _layers(source)
    report = []
    for path, p, s in iter_darknet_layers(target):
        part, name = path.split('/')
        kind = 'output conv' if part == 'head' and name in output_convs else 'conv'
        why = 'not in the source' if path not in src_layers else _mismatch(src_layers[path], (p, s))
        if why:
            report.append((path, 'skipped', f'{kind} {why}: freshly initialised'))
        else:
            kernel = p['kernel'] if s is None else p['conv']['kernel']
            report.append((path, 'copied', f'{kind}, kernel {tuple(kernel.shape)}'))
    return report


def transfer_variables(
    source: dict, target: dict, output_convs: tuple[str, ...] = ()
) -> tuple[dict, list[tuple[str, str, str]]]:
    """Copies every convolution of `source` into `target` whose name and tensor shapes match.

    Args:
      source, target: {'params', 'batch_stats'} of YOLOv3 / YOLOv3-tiny models (conv names in Darknet order).
      output_convs: names (within `head`) of the class-dependent output convolutions, for the report only.

    Returns:
      (variables, report): `target` with the matching layers replaced (cast to the target's dtypes, as JAX
      arrays), and the `plan_transfer` report.
    """
    report = plan_transfer(source, target, output_convs)
    src_layers = _layers(source)
    params = jax.tree.map(lambda x: x, target['params'])  # new containers, same leaves
    stats = jax.tree.map(lambda x: x, target.get('batch_stats', {}))
    for (path, p, s), (_, action, _) in zip(iter_darknet_layers(target), report, strict=True):
        if action != 'copied':
            continue
        part, name = path.split('/')
        src_p, src_s = src_layers[path]
        params[part][name] = jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), src_p, p)
        if s is not None:
            stats[part][name] = jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), src_s, s)
    return {'params': params, 'batch_stats': stats}, report


def _architecture(variables: dict) -> str:
    n = sum(1 for _ in iter_darknet_layers(variables))
    names = {75: 'yolov3', 13: 'yolov3_tiny', 110: 'yolov4', 21: 'yolov4_tiny'}
    return names.get(n, f'a network with {n} convolutions')


def load_darknet_source(path: Path, mc: ml_collections.ConfigDict) -> dict:
    """The variables of the Darknet file `path`, read as `mc.name` with the class count the file holds."""
    classes = darknet.infer_num_classes(path, mc.name, mc.width_multiplier)
    src_mc = darknet.darknet_model_config(mc.name, num_classes=classes or 80, input_size=mc.input_size)
    src_mc.width_multiplier = mc.width_multiplier
    try:
        return darknet.load_weights(path, src_mc, epsilon_check='ignore')
    except ValueError as e:  # names expected and found counts (and the architecture the count fits)
        raise ConfigError(f'config.train.init_from: {e}') from None


def load_checkpoint_source(path: Path) -> tuple[dict, int]:
    """{'params', 'batch_stats'} (NumPy, on the host) of a yolo_jax checkpoint, and its step (see
    `checkpointing.load_model`: the source may have another class count or optimizer)."""
    variables, step, _ = checkpointing.load_model(path, 'config.train.init_from')
    return variables, step


def initial_variables(config: ml_collections.ConfigDict, model: Any) -> dict:
    """Variables for `model` initialised from `config.train.init_from` (see the module docstring).

    Args:
      config: the run's config (config.model describes `model`; config.train.seed its fresh init).
      model: the Flax module `create_model(config.model)` built.

    Returns:
      {'params', 'batch_stats'} of `model`: copied layers from the source, the rest freshly initialised.

    Raises:
      FileNotFoundError if init_from does not exist (unless config.train.init_from_missing is 'scratch': then
      a warning and a fresh init) or holds no checkpoint; ValueError if it holds another
      architecture (e.g. YOLOv3 weights for YOLOv3-tiny) or a convolution other than the class-dependent
      output convs does not match in shape (e.g. another width_multiplier).
    """
    if config.train.init_from_missing not in ('error', 'scratch'):
        raise ConfigError(f"config.train.init_from_missing: expected 'error' or 'scratch', got "
                          f'{config.train.init_from_missing!r}')
    path = Path(config.train.init_from).expanduser()
    # A missing published file is downloaded when config.train.init_from_url says from where (weights.py).
    why = weights.fetch_if_missing(path, str(config.train.init_from_url)) if config.train.init_from_url else None
    why = f' ({why})' if why else ''
    if not path.exists() and config.train.init_from_missing == 'scratch':
        logging.warning('config.train.init_from: %s does not exist%s; training from scratch instead '
                        '(config.train.init_from_missing=scratch)', path, why)
        return fresh_variables(config, model)
    if not path.exists():
        raise MissingFileError(
            f'config.train.init_from: {path} does not exist (a Darknet .weights file or an orbax checkpoint '
            f'directory){why}'
        )
    if path.is_dir():
        source, step = load_checkpoint_source(path)
        what = f'orbax checkpoint {path} (step {step})'
    else:
        source = load_darknet_source(path, config.model)
        what = f'Darknet weights {path} (header {tuple(darknet.read_header(path))})'
        if not math.isclose(config.model.bn_epsilon, darknet.DARKNET_BN_EPSILON, rel_tol=1e-6):
            logging.warning(
                'Fine-tuning Darknet weights with config.model.bn_epsilon=%g; Darknet normalises with %g, so the '
                'network starts close to, not exactly at, the published one (--config.model.bn_epsilon=%g fixes it)',
                config.model.bn_epsilon,
                darknet.DARKNET_BN_EPSILON,
                darknet.DARKNET_BN_EPSILON,
            )
    # Check on shapes first: a mismatch fails before the (seconds-long) fresh init.
    abstract = jax.eval_shape(lambda: fresh_variables(config, model))
    if set(_layers(source)) != set(_layers(abstract)):
        raise ConfigError(
            f'config.train.init_from: {what} holds {_architecture(source)} but config.model.name is '
            f'{config.model.name!r} ({_architecture(abstract)})'
        )
    report = plan_transfer(source, abstract, tuple(model.output_convs))
    # Only the class-dependent output convs may differ; any other mismatch means another width (or a
    # hand-edited model), and a half-transferred network would train from a silently broken start.
    bad = [r for r in report if r[1] == 'skipped' and not r[2].startswith('output conv')]
    if bad:
        raise ConfigError(
            f'config.train.init_from: {len(bad)} of {len(report)} convolutions of {what} do not match config.model '
            f'(width_multiplier {config.model.width_multiplier}?); first: {bad[0][0]} {bad[0][2]}'
        )
    variables, report = transfer_variables(source, fresh_variables(config, model), tuple(model.output_convs))
    copied = sum(1 for r in report if r[1] == 'copied')
    logging.info('Initialised %d of %d convolutions from %s', copied, len(report), what)
    for path, action, reason in report:
        logging.info('  %s %s: %s', action, path, reason)
    return variables
