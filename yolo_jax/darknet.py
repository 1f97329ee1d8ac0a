"""Darknet `.weights` files ↔ Flax variables of YOLOv3 / YOLOv3-tiny / YOLOv4 / YOLOv4-tiny.

File layout (little-endian, as Darknet's `parser.c` writes it on x86):
  header: major, minor, revision as int32, then `seen` (images trained on) as int64 when
          major * 10 + minor >= 2 (and both < 1000, Darknet's guard), else as int32 → 20 or 16 bytes;
  body:   float32 values, convolution by convolution in Darknet's layer order (`iter_darknet_layers`):
          with BatchNorm:  beta (bn bias) (out,), gamma (bn scale) (out,), running mean (out,),
                           running variance (out,), kernel (out, in, kh, kw);
          output convs:    bias (out,), kernel (out, in, kh, kw).
Flax kernels are (kh, kw, in, out): the loader transposes (out, in, kh, kw) → (kh, kw, in, out).

The body must hold exactly as many values as the model (62,001,757 for YOLOv3 with 80 classes, 8,858,734 for
YOLOv3-tiny, 64,429,405 for YOLOv4, 6,062,814 for YOLOv4-tiny): a truncated or padded file, or weights of another
architecture or class count, is an error that names the expected and found counts. So is a file of the right size
whose values cannot be trained weights (NaN or infinite values, negative BatchNorm variances; e.g. random bytes):
the error names the layers. Nothing here reads a config at import time.

BatchNorm epsilon: Darknet's CUDA kernel (`normalize_kernel`, which trained the published weights) and
AlexeyAB's CPU path compute (x - mean) / sqrt(var + 1e-5); pjreddie's CPU path (x - mean) / (sqrt(var) + 1e-6).
`DARKNET_BN_EPSILON` = 1e-5 (Keras' 1e-3, the reference's default, changes the outputs of the loaded network).
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from yolo_jax.defaults import DARKNET_BN_EPSILON, MODEL_NAMES, model_config
from yolo_jax.errors import ConfigError, DataError, MissingFileError, summarize
from yolo_jax.models import create_model, iter_darknet_layers, variable_shapes

# DARKNET_BN_EPSILON (1e-5, from defaults): sqrt(var + eps) as Darknet's GPU normalize_kernel and cuDNN path
# compute it (see module docstring).
_FLOAT = np.dtype('<f4')


class DarknetHeader(NamedTuple):
    """The header of a `.weights` file; `seen` is the number of training images Darknet had processed."""

    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def seen_is_int64(self) -> bool:
        """Darknet's rule (parser.c): a 64-bit `seen` from version 0.2 on (and both numbers < 1000)."""
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def nbytes(self) -> int:
        return 20 if self.seen_is_int64 else 16

    def to_bytes(self) -> bytes:
        seen_dtype = '<i8' if self.seen_is_int64 else '<i4'
        return np.array(self[:3], '<i4').tobytes() + np.array(self.seen, seen_dtype).tobytes()


def read_header(path: str | os.PathLike) -> DarknetHeader:
    """The header of the `.weights` file at `path` (ValueError if the file is shorter than its header)."""
    with open(path, 'rb') as f:
        raw = f.read(20)
    if len(raw) < 12:
        raise DataError(f'{path}: {len(raw)} bytes is too short for a Darknet .weights header')
    major, minor, revision = (int(v) for v in np.frombuffer(raw[:12], '<i4'))
    header = DarknetHeader(major, minor, revision, 0)
    if len(raw) < header.nbytes:
        raise DataError(f'{path}: {len(raw)} bytes is too short for a Darknet .weights header of {header.nbytes}')
    seen = np.frombuffer(raw[12 : header.nbytes], '<i8' if header.seen_is_int64 else '<i4')[0]
    return header._replace(seen=int(seen))


def darknet_model_config(name: str, num_classes: int = 80, input_size: int = 416) -> ml_collections.ConfigDict:
    """`config.model` for Darknet's published networks: `defaults.model_config` with Darknet's BN epsilon."""
    m = model_config(name, num_classes=num_classes, input_size=input_size)
    m.bn_epsilon = DARKNET_BN_EPSILON
    return m


def abstract_variables(mc: ml_collections.ConfigDict) -> dict:
    """Shapes/dtypes ({'params', 'batch_stats'} of jax.ShapeDtypeStruct) of the model `mc` describes.

    Only the architecture, class count, anchors per scale and width fix the shapes (not the input size,
    strides or compute dtype), so results are cached on those. Do not mutate the returned dict.
    """
    return _abstract(mc.name, int(mc.num_classes), len(mc.anchors[0]), float(mc.width_multiplier))


@functools.lru_cache(maxsize=64)
def _abstract(name: str, num_classes: int, num_anchors: int, width: float) -> dict:
    mc = model_config(name, num_classes=num_classes)
    mc.anchors = tuple(a[:1] * num_anchors for a in mc.anchors)  # only the count matters for shapes
    mc.width_multiplier = width
    return variable_shapes(create_model(mc))


def value_count(mc: ml_collections.ConfigDict) -> int:
    """Number of float32 values a `.weights` file of the model `mc` holds (every param and batch stat)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_variables(mc)))


def _with(mc: ml_collections.ConfigDict, **overrides: Any) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(mc.to_dict())
    for k, v in overrides.items():
        if k == 'name':  # another architecture: its own strides and anchors
            fresh = model_config(v, num_classes=out.num_classes, input_size=out.input_size)
            fresh.update({key: out[key] for key in ('bn_momentum', 'bn_epsilon', 'width_multiplier', 'dtype')})
            out = fresh
        else:
            out[k] = v
    return out


def solve_num_classes(count: int, mc: ml_collections.ConfigDict) -> int | None:
    """The class count C >= 1 for which the architecture of `mc` (its width and anchors) holds exactly
    `count` values, or None. The count is affine in C: count(C) = count(0) + C * (count(1) - count(0))."""
    c0, c1 = value_count(_with(mc, num_classes=0)), value_count(_with(mc, num_classes=1))
    classes, rest = divmod(count - c0, c1 - c0)
    return classes if rest == 0 and classes >= 1 else None


def _body_count(path: str | os.PathLike, header: DarknetHeader) -> tuple[int, int]:
    """(float32 values after the header, leftover bytes)."""
    return divmod(os.path.getsize(path) - header.nbytes, _FLOAT.itemsize)


def infer_num_classes(path: str | os.PathLike, name: str, width_multiplier: float = 1.0) -> int | None:
    """The class count of the `name` network stored in `path` (judged by its size), or None if none fits."""
    header = read_header(path)
    count, extra = _body_count(path, header)
    if extra:
        return None
    mc = model_config(name, num_classes=80)
    mc.width_multiplier = width_multiplier
    return solve_num_classes(count, mc)


def _describe(mc: ml_collections.ConfigDict) -> str:
    width = '' if mc.width_multiplier == 1.0 else f', width_multiplier {mc.width_multiplier}'
    return f'{mc.name} with {mc.num_classes} classes, {len(mc.anchors[0])} anchors per scale{width}'


def _count_error(path: str | os.PathLike, mc: ml_collections.ConfigDict, expected: int, found: int, extra: int) -> str:
    msg = (
        f'{path}: expected {expected:,} float32 values for {_describe(mc)}, found {found:,}'
        + (f' and {extra} stray bytes' if extra else '')
        + f' after the {read_header(path).nbytes}-byte header'
    )
    hints = []
    if not extra:
        for name in MODEL_NAMES:
            classes = solve_num_classes(found, _with(mc, name=name))
            if classes is not None:
                hints.append(f'{name} with {classes} classes')
    if hints:
        return f'{msg}; that count fits {" or ".join(hints)}: wrong config.model.name or num_classes?'
    diff = found - expected
    what = f'truncated: {-diff:,} values missing' if diff < 0 else f'extra data: {diff:,} values too many'
    return f'{msg} ({what})'


def check_epsilon(mc: ml_collections.ConfigDict, action: str = 'warn') -> None:
    """Warns ('warn'), raises ('error') or does nothing ('ignore') when mc.bn_epsilon is not Darknet's."""
    if action not in ('warn', 'error', 'ignore'):
        raise ValueError(f"epsilon_check: expected 'warn', 'error' or 'ignore', got {action!r}")
    if action == 'ignore' or math.isclose(mc.bn_epsilon, DARKNET_BN_EPSILON, rel_tol=1e-6):
        return
    msg = (
        f'config.model.bn_epsilon={mc.bn_epsilon} but Darknet weights were trained with {DARKNET_BN_EPSILON}: '
        'the loaded network will not reproduce Darknet (use darknet.darknet_model_config)'
    )
    if action == 'error':
        raise ConfigError(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def load_weights(path: str | os.PathLike, mc: ml_collections.ConfigDict, *, epsilon_check: str = 'warn') -> dict:
    """Reads a Darknet `.weights` file into the variables of the model `mc` (config.model) describes.

    Args:
      path: the `.weights` file.
      mc: config.model (name, num_classes, anchors, width_multiplier fix the shapes).
      epsilon_check: 'warn' (default), 'error' or 'ignore' when mc.bn_epsilon differs from DARKNET_BN_EPSILON.

    Returns:
      {'params', 'batch_stats'} as NumPy float32 arrays, structured like `create_model(mc).init(...)`:
      kernels (kh, kw, in, out); BN scale/bias/mean/var (out,); output-conv bias (out,).
      The header is available through `read_header(path)`.

    Raises:
      FileNotFoundError if `path` does not exist; ValueError (DataError) if its value count differs from the
      model's, or it holds non-finite values or negative BatchNorm variances (naming the layers).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f'Darknet weights not found: {path}')
    check_epsilon(mc, epsilon_check)
    header = read_header(path)
    abstract = abstract_variables(mc)
    expected = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))
    found, extra = _body_count(path, header)
    if found != expected or extra:
        raise DataError(_count_error(path, mc, expected, found, extra))
    values = np.fromfile(path, dtype=_FLOAT, offset=header.nbytes)
    pos = 0

    def take(shape: tuple[int, ...]) -> np.ndarray:
        nonlocal pos
        n = math.prod(shape)
        out = values[pos : pos + n].reshape(shape)
        pos += n
        return out.astype(np.float32)  # native byte order, owns its memory

    params: dict = {}
    stats: dict = {}
    problems: list[str] = []
    for layer_path, p, s in iter_darknet_layers(abstract):
        part, name = layer_path.split('/')
        if s is None:  # output conv: bias, kernel
            kh, kw, cin, cout = p['kernel'].shape
            bias = take((cout,))
            kernel = take((cout, cin, kh, kw)).transpose(2, 3, 1, 0)
            params.setdefault(part, {})[name] = {'kernel': np.ascontiguousarray(kernel), 'bias': bias}
            problems += _value_problems(layer_path, {'bias': bias, 'kernel': kernel})
        else:  # ConvBN: beta, gamma, mean, var, kernel
            kh, kw, cin, cout = p['conv']['kernel'].shape
            beta, gamma, mean, var = (take((cout,)) for _ in range(4))
            kernel = take((cout, cin, kh, kw)).transpose(2, 3, 1, 0)
            params.setdefault(part, {})[name] = {
                'conv': {'kernel': np.ascontiguousarray(kernel)},
                'bn': {'scale': gamma, 'bias': beta},
            }
            stats.setdefault(part, {})[name] = {'bn': {'mean': mean, 'var': var}}
            problems += _value_problems(
                layer_path, {'bn beta': beta, 'bn gamma': gamma, 'bn mean': mean, 'bn variance': var, 'kernel': kernel}
            )
    assert pos == expected, (pos, expected)
    if problems:
        raise DataError(
            summarize(
                problems,
                f'{path}: not usable as weights (corrupt or not a Darknet .weights file): {len(problems)} problem(s)',
                limit=5,
            )
        )
    return {'params': params, 'batch_stats': stats}


def _value_problems(layer: str, arrays: dict[str, np.ndarray]) -> list[str]:
    """'layer: N NaN/infinite values in its kernel', '... negative values in its bn variance' for one layer."""
    out = []
    for what, x in arrays.items():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            out.append(f'{layer}: {bad:,} of {np.size(x):,} {what} values are NaN or infinite')
        if what == 'bn variance' and (negative := int(np.count_nonzero(x < 0))):
            out.append(f'{layer}: {negative:,} of {np.size(x):,} bn variance values are negative')
    return out


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {'/'.join(str(getattr(k, 'key', k)) for k in keys): tuple(np.shape(x)) for keys, x in flat}


def _check_structure(variables: dict, abstract: dict, mc: ml_collections.ConfigDict) -> None:
    """ValueError listing the first differences if `variables` is not shaped like the model `mc`."""
    got, want = _flat_shapes(variables), _flat_shapes(abstract)
    keys = sorted(got.keys() | want.keys())
    diffs = [f'{k}: {got.get(k)} vs {want.get(k)}' for k in keys if got.get(k) != want.get(k)]
    if diffs:
        raise ValueError(
            f'variables do not match {_describe(mc)} ({len(diffs)} differences, given vs expected shape: '
            + '; '.join(diffs[:4])
            + ('; ...' if len(diffs) > 4 else '')
            + ')'
        )


def save_weights(
    path: str | os.PathLike,
    variables: dict,
    mc: ml_collections.ConfigDict,
    header: tuple[int, int, int, int] = (0, 2, 0, 0),
) -> None:
    """Writes {'params', 'batch_stats'} of the model `mc` describes as a Darknet `.weights` file.

    The layout is the one `load_weights` reads (see the module docstring), so load → save reproduces the
    original file byte for byte. The file is written to a temporary file beside `path`, then renamed over it:
    a crash never leaves a half-written `.weights` file.

    Args:
      path: destination file.
      variables: {'params', 'batch_stats'} (NumPy or JAX arrays; cast to float32).
      mc: config.model of the network (checked against the variables' shapes).
      header: (major, minor, revision, seen); the default (0, 2, 0, 0) is the version Darknet writes.
    """
    header = DarknetHeader(*(int(v) for v in header))
    abstract = abstract_variables(mc)
    variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    _check_structure(variables, abstract, mc)

    def chunks():
        as_f32 = lambda x: np.ascontiguousarray(np.asarray(x), dtype=_FLOAT)
        for _, p, s in iter_darknet_layers(variables):
            if s is None:
                yield as_f32(p['bias'])
                yield as_f32(np.transpose(np.asarray(p['kernel']), (3, 2, 0, 1)))
            else:
                for x in (p['bn']['bias'], p['bn']['scale'], s['bn']['mean'], s['bn']['var']):
                    yield as_f32(x)
                yield as_f32(np.transpose(np.asarray(p['conv']['kernel']), (3, 2, 0, 1)))

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(header.to_bytes())
            for chunk in chunks():
                f.write(chunk.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a weights file is ordinary data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
