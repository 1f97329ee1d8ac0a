"""ONNX export of the detector: letterbox + network + decode + per-class NMS in one graph (opset 17).

Why this route: tf2onnx cannot read our SavedModel (jax2tf only serialises natively now: the SavedModel holds a
single XlaCallModule op of StableHLO, which tf2onnx has no handler for), and jax2onnx pins orbax-export, whose
requirements downgrade orbax-checkpoint below what training uses. So the graph is written with the `onnx`
package alone:

* the network is converted from its jaxpr (`jax.make_jaxpr` of the BatchNorm-folded model): conv (+ bias),
  leaky ReLU, max-pools, nearest x2 upsampling and concatenation map to ONNX Conv / LeakyRelu / MaxPool /
  Resize / Concat, elementwise math (YOLOv4's mish) to its ONNX op (log1p, which ONNX lacks, to an exact
  Log formula), computed in NCHW (transposes only at the edges): whatever the model code does, the ONNX
  graph is its trace, not a second hand-written copy of the architecture;
* pre-processing with standard ops: the letterbox geometry in float64 exactly as data/letterbox.py, the
  bilinear half-pixel `Resize` (TF's resize without antialias), `Pad` with grey 128, / 255;
* post-processing as postprocess.py: decode (sigmoid stretched by scale_xy, exp clamped at MAX_LOG_WH), undo
  the letterbox, clip, drop inverted / empty boxes, argmax class, score = objectness * probability > threshold,
  then ONNX `NonMaxSuppression` per class (each candidate scores only in its argmax class) and `TopK` over all
  classes: the same set as postprocess.nms's greedy loop, since classes never interact. Hard NMS only (soft-NMS
  has no ONNX op).

Input `images` uint8 (batch, height, width, 3); outputs as yolo_jax.export (boxes, scores, classes, count).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.extend
import numpy as np

from yolo_jax import postprocess as pp
from yolo_jax.decode import MAX_LOG_WH
from yolo_jax.errors import ConfigError, UserError

OPSET = 17
NCHW, NHWC = (0, 3, 1, 2), (0, 2, 3, 1)
# The jax versions whose primitive names and parameters this converter is tested against (setup.cfg's `export`
# extra fences jax to the same range; tests/test_parity.py lists the four networks' primitives against CONVERTED).
TESTED_JAX = '>=0.10,<0.11'


class UnsupportedLayerError(UserError, NotImplementedError):
    """The network has a layer (a jaxpr primitive) that the ONNX converter cannot express; the message names the
    layer, the primitive and the installed jax."""


def _onnx():
    try:
        import onnx  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'yolo_jax[export]'") from e
    return onnx


class _Graph:
    """A growing list of ONNX nodes and initializers with fresh names."""

    def __init__(self):
        self.onnx = _onnx()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f'{hint}_{self._count}'

    def const(self, value: Any, dtype: Any = None, hint: str = 'c') -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs


# ---------------------------------------------------------------------------------------------------- network


class _Value:
    """A jaxpr variable's ONNX tensor(s): NHWC (the jaxpr's own layout) and/or NCHW names, or a constant."""

    def __init__(self, const: np.ndarray | None = None, nhwc: str | None = None, nchw: str | None = None):
        self.const, self.nhwc, self.nchw = const, nhwc, nchw


class _NetworkConverter:
    """Converts the jaxpr of a (folded) model's forward pass, batch traced as 1, to ONNX nodes in `graph`."""

    def __init__(self, graph: _Graph):
        self.g = graph
        self.producer: dict[Any, Any] = {}
        self.convs: dict[Any, Any] = {}  # conv outvar → its ONNX node (for bias fusion)

    def nhwc(self, v: _Value) -> str:
        if v.nhwc is None:
            v.nhwc = self.g.op('Transpose', [v.nchw], perm=list(NHWC))
        return v.nhwc

    def nchw(self, v: _Value) -> str:
        if v.nchw is None:
            v.nchw = self.g.op('Transpose', [v.nhwc], perm=list(NCHW))
        return v.nchw

    def run(self, jaxpr: Any, consts: list[Any], args: list[_Value], layer: str = '') -> list[_Value]:
        """ONNX values of `jaxpr`'s outputs; `layer`: the enclosing call's name stack (for error messages)."""
        env: dict[Any, _Value] = {}
        uses: dict[Any, int] = {}
        for eqn in jaxpr.eqns:
            for v in eqn.invars:
                if not _is_literal(v):
                    uses[v] = uses.get(v, 0) + 1
        for v in jaxpr.outvars:
            if not _is_literal(v):
                uses[v] = uses.get(v, 0) + 1
        for var, c in zip(jaxpr.constvars, consts, strict=True):
            env[var] = _Value(const=np.asarray(c))
        for var, a in zip(jaxpr.invars, args, strict=True):
            env[var] = a

        def read(v: Any) -> _Value:
            return _Value(const=np.asarray(v.val)) if _is_literal(v) else env[v]

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            if all(i.const is not None for i in ins):  # constant folding (parameter reshapes and the like)
                out = eqn.primitive.bind(*[i.const for i in ins], **eqn.params)
                outs = out if eqn.primitive.multiple_results else [out]
                for var, o in zip(eqn.outvars, outs, strict=True):
                    env[var] = _Value(const=np.asarray(o))
                continue
            where = _layer_name(layer, eqn)
            try:
                outs = self.convert(eqn, ins, uses, where)
            except UnsupportedLayerError:
                raise
            except NotImplementedError as e:
                raise UnsupportedLayerError(_unsupported(where, eqn.primitive.name, str(e))) from e
            for var, o in zip(eqn.outvars, outs, strict=True):
                env[var] = o
                self.producer[var] = (eqn, ins)
        return [read(v) for v in jaxpr.outvars]

    def convert(self, eqn: Any, ins: list[_Value], uses: dict, layer: str = '') -> list[_Value]:
        name, p, g = eqn.primitive.name, eqn.params, self.g
        if name not in CONVERTED:
            raise NotImplementedError('no ONNX conversion rule')
        if name in _CALLS:
            closed = p.get('jaxpr') or p.get('call_jaxpr') or p.get('fun_jaxpr')
            alpha = None
            if p.get('name') == 'leaky_relu' and len(ins) == 2 and ins[1].const is not None and ins[1].const.ndim == 0:
                alpha = float(ins[1].const)  # flax's leaky_relu(x, negative_slope): where(x >= 0, x, slope * x)
            if alpha is not None:
                x = ins[0]
                if x.nchw is not None:
                    return [_Value(nchw=g.op('LeakyRelu', [x.nchw], alpha=alpha))]
                return [_Value(nhwc=g.op('LeakyRelu', [x.nhwc], alpha=alpha))]
            inner = closed.jaxpr if hasattr(closed, 'jaxpr') else closed
            consts = closed.consts if hasattr(closed, 'consts') else []
            return self.run(inner, consts, ins, layer)
        if name == 'conv_general_dilated':
            dn = p['dimension_numbers']
            ok = (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == (NCHW, (3, 2, 0, 1), NCHW)  # NHWC HWIO
            if not ok or ins[1].const is None or p['feature_group_count'] != 1 or p['batch_group_count'] != 1:
                raise NotImplementedError(f'ONNX export: unsupported convolution {dn}')
            if any(d != 1 for d in (*p['lhs_dilation'], *p['rhs_dilation'])):
                raise NotImplementedError('ONNX export: dilated convolutions')
            (pt, pb), (pl, pr) = p['padding']
            kernel = g.const(np.transpose(ins[1].const, (3, 2, 0, 1)).astype(np.float32), hint='kernel')
            out = g.op('Conv', [self.nchw(ins[0]), kernel], strides=list(p['window_strides']), pads=[pt, pl, pb, pr])
            self.convs[eqn.outvars[0]] = (g.nodes[-1], uses.get(eqn.outvars[0], 0))
            return [_Value(nchw=out)]
        if name == 'add' and self._fuse_bias(eqn, ins):
            return [_Value(nchw=ins[0].nchw)]
        if name in _ELEMENTWISE:
            return [self._elementwise(_ELEMENTWISE[name], ins)]
        if name in _UNARY:
            return [self._unary(_UNARY[name], ins[0])]
        if name == 'ne':
            return [self._unary('Not', self._elementwise('Equal', ins))]
        if name == 'log1p':
            return [self._log1p(ins[0])]
        if name == 'select_n':
            if len(ins) != 3:
                raise NotImplementedError('ONNX export: select_n with more than two cases')
            return [self._elementwise('Where', [ins[0], ins[2], ins[1]])]
        if name == 'convert_element_type':
            dtype = np.dtype(p['new_dtype'])
            to = self.g.onnx.helper.np_dtype_to_tensor_dtype(dtype)
            return [self._unary('Cast', ins[0], to=to)]
        if name == 'reduce_window_max':
            wd, ws, pad = p['window_dimensions'], p['window_strides'], p['padding']
            if wd[0] != 1 or wd[3] != 1 or ws[0] != 1 or ws[3] != 1 or any(pad[i] != (0, 0) for i in (0, 3)):
                raise NotImplementedError('ONNX export: max-pool over batch or channels')
            out = g.op('MaxPool', [self.nchw(ins[0])], kernel_shape=list(wd[1:3]), strides=list(ws[1:3]),
                       pads=[pad[1][0], pad[2][0], pad[1][1], pad[2][1]])
            return [_Value(nchw=out)]
        if name == 'reduce_max':
            pooled = self._stride2_pool(eqn, ins)
            if pooled is not None:
                return [pooled]
            return [_Value(nhwc=g.op('ReduceMax', [self.nhwc(ins[0])], axes=list(p['axes']), keepdims=0))]
        if name == 'reshape':
            up = self._upsample(eqn, ins)
            if up is not None:
                return [up]
            if p.get('dimensions') is not None:
                raise NotImplementedError('ONNX export: reshape with dimensions')
            shape = g.const([0, *p['new_sizes'][1:]], np.int64, hint='shape')
            return [_Value(nhwc=g.op('Reshape', [self.nhwc(ins[0]), shape]))]
        if name == 'broadcast_in_dim':
            shape, dims = p['shape'], p['broadcast_dimensions']
            if not dims or dims[0] != 0:
                raise NotImplementedError('ONNX export: broadcast over the batch dimension')
            src = eqn.invars[0].aval.shape
            expanded = [1] * len(shape)
            for d, s in zip(dims, src, strict=True):
                expanded[d] = s
            x = g.op('Reshape', [self.nhwc(ins[0]), g.const([0, *expanded[1:]], np.int64, hint='shape')])
            return [_Value(nhwc=g.op('Expand', [x, g.const([1, *shape[1:]], np.int64, hint='shape')]))]
        if name == 'concatenate':
            if p['dimension'] == 3 and all(i.const is None and i.nchw is not None for i in ins):
                return [_Value(nchw=g.op('Concat', [i.nchw for i in ins], axis=1))]
            return [_Value(nhwc=g.op('Concat', [self._nhwc_or_const(i) for i in ins], axis=p['dimension']))]
        if name == 'slice':
            starts, limits = p['start_indices'], p['limit_indices']
            if p.get('strides') not in (None, (1,) * len(starts)) or starts[0] != 0:
                raise NotImplementedError('ONNX export: strided or batch slices')
            axes = list(range(1, len(starts)))
            return [_Value(nhwc=g.op(
                'Slice', [self.nhwc(ins[0]), g.const(starts[1:], np.int64), g.const(limits[1:], np.int64),
                          g.const(axes, np.int64)]))]
        raise NotImplementedError(f'ONNX export: no conversion for primitive {name!r}')

    def _nhwc_or_const(self, v: _Value) -> str:
        return self.g.const(v.const) if v.const is not None else self.nhwc(v)

    def _unary(self, op: str, x: _Value, **attrs: Any) -> _Value:
        if x.nchw is not None:
            return _Value(nchw=self.g.op(op, [x.nchw], **attrs))
        return _Value(nhwc=self.g.op(op, [x.nhwc], **attrs))

    def _elementwise(self, op: str, ins: list[_Value]) -> _Value:
        tensors = [i for i in ins if i.const is None]
        rank4 = all(len(i.const.shape) <= 4 for i in ins if i.const is not None)
        if rank4 and all(t.nchw is not None for t in tensors):
            names = []
            for i in ins:
                if i.const is None:
                    names.append(i.nchw)
                else:
                    c = i.const.reshape((1,) * (4 - i.const.ndim) + i.const.shape) if i.const.ndim else i.const
                    names.append(self.g.const(np.transpose(c, NCHW) if c.ndim == 4 else c))
            return _Value(nchw=self.g.op(op, names))
        return _Value(nhwc=self.g.op(op, [self._nhwc_or_const(i) for i in ins]))

    def _log1p(self, x: _Value) -> _Value:
        """log(1 + x) accurate for small x (Goldberg's trick): u = 1 + x; x where u == 1, else
        log(u) * x / (u - 1), which cancels u's rounding error (ONNX has no Log1p; YOLOv4's mish reaches it through
        softplus = logaddexp(x, 0))."""
        one = _Value(const=np.float32(1.0))
        u = self._elementwise('Add', [x, one])
        scaled = self._elementwise('Div', [self._elementwise('Mul', [self._unary('Log', u), x]),
                                           self._elementwise('Sub', [u, one])])
        return self._elementwise('Where', [self._elementwise('Equal', [u, one]), x, scaled])

    def _fuse_bias(self, eqn: Any, ins: list[_Value]) -> bool:
        """conv(x) + bias (1, 1, 1, C) with the conv used only here → the Conv node's bias input."""
        a, b = eqn.invars
        if _is_literal(a) or a not in self.convs or ins[1].const is None:
            return False
        node, uses = self.convs[a]
        bias = ins[1].const
        if uses != 1 or len(node.input) != 2 or bias.ndim != 4 or bias.shape[:3] != (1, 1, 1):
            return False
        node.input.append(self.g.const(bias.reshape(-1).astype(np.float32), hint='bias'))
        return True

    def _stride2_pool(self, eqn: Any, ins: list[_Value]) -> _Value | None:
        """x.reshape(B, H/2, 2, W/2, 2, C).max(axis=(2, 4)) (models/layers.maxpool2x2) → MaxPool 2x2/2."""
        src = eqn.invars[0]
        if tuple(eqn.params['axes']) != (2, 4) or src not in self.producer:
            return None
        reshape, rins = self.producer[src]
        if reshape.primitive.name != 'reshape':
            return None
        b, h, w, c = reshape.invars[0].aval.shape
        if tuple(reshape.params['new_sizes']) != (b, h // 2, 2, w // 2, 2, c) or h % 2 or w % 2:
            return None
        return _Value(nchw=self.g.op('MaxPool', [self.nchw(rins[0])], kernel_shape=[2, 2], strides=[2, 2]))

    def _upsample(self, eqn: Any, ins: list[_Value]) -> _Value | None:
        """broadcast (B, H, 1, W, 1, C) → (B, H, 2, W, 2, C) then reshape (B, 2H, 2W, C) (layers.upsample2x)
        → Resize nearest x2."""
        src = eqn.invars[0]
        if src not in self.producer:
            return None
        bcast, bins = self.producer[src]
        if bcast.primitive.name != 'broadcast_in_dim' or tuple(bcast.params['broadcast_dimensions']) != (0, 1, 3, 5):
            return None
        b, h, w, c = bcast.invars[0].aval.shape
        if (tuple(bcast.params['shape']) != (b, h, 2, w, 2, c)
                or tuple(eqn.params['new_sizes']) != (b, 2 * h, 2 * w, c)):
            return None
        scales = self.g.const([1.0, 1.0, 2.0, 2.0], np.float32, hint='scales')
        out = self.g.op('Resize', [self.nchw(bins[0]), '', scales], mode='nearest',
                        coordinate_transformation_mode='asymmetric', nearest_mode='floor')
        return _Value(nchw=out)


_ELEMENTWISE = {'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max', 'min': 'Min',
                'ge': 'GreaterOrEqual', 'gt': 'Greater', 'le': 'LessOrEqual', 'lt': 'Less', 'eq': 'Equal'}

_UNARY = {'abs': 'Abs', 'neg': 'Neg', 'exp': 'Exp', 'log': 'Log', 'tanh': 'Tanh', 'logistic': 'Sigmoid',
          'sqrt': 'Sqrt'}

_CALLS = ('pjit', 'jit', 'closed_call', 'custom_jvp_call', 'custom_vjp_call')  # converted by inlining their jaxpr

# Every primitive _NetworkConverter.convert has a rule for (it rejects the rest up front, naming them).
CONVERTED = frozenset({
    *_ELEMENTWISE, *_UNARY, *_CALLS, 'conv_general_dilated', 'ne', 'log1p', 'select_n', 'convert_element_type',
    'reduce_window_max', 'reduce_max', 'reshape', 'broadcast_in_dim', 'concatenate', 'slice',
})


def _layer_name(outer: str, eqn: Any) -> str:
    """The Flax module path of `eqn` (its name stack, e.g. 'YOLOv4/backbone/conv_001'), under the enclosing
    call's `outer` path when the equation sits inside a nested jaxpr."""
    inner = str(eqn.source_info.name_stack)
    if outer and not inner.startswith(outer):
        return f'{outer}/{inner}' if inner else outer
    return inner or outer or '(top level)'


def _unsupported(layer: str, primitive: str, reason: str) -> str:
    """The one-line message of UnsupportedLayerError."""
    reason = reason.removeprefix('ONNX export: ')
    return (f'ONNX export cannot express layer {layer} (primitive {primitive!r}: {reason}); '
            f'the converter is tested with jax{TESTED_JAX}, installed jax {jax.__version__}: use --format=savedmodel '
            'or --format=stablehlo for this network')


def network_primitives(closed: Any) -> dict[str, set[str]]:
    """{primitive name: the layers using it} of every equation of a network's closed jaxpr that the converter must
    translate: those fed, directly or through nested calls, by the network's input (equations on weights alone
    are constant-folded by binding them and need no rule). Nested call jaxprs are walked as convert inlines them."""
    found: dict[str, set[str]] = {}

    def walk(jaxpr: Any, dynamic_in: list[bool], layer: str) -> list[bool]:
        dynamic = {v: d for v, d in zip(jaxpr.invars, dynamic_in, strict=True)}
        is_dyn = lambda v: not _is_literal(v) and dynamic.get(v, False)
        for eqn in jaxpr.eqns:
            flags = [is_dyn(v) for v in eqn.invars]
            if not any(flags):
                continue
            where = _layer_name(layer, eqn)
            name = eqn.primitive.name
            found.setdefault(name, set()).add(where)
            outs = [True] * len(eqn.outvars)
            if name in _CALLS:
                closed_inner = eqn.params.get('jaxpr') or eqn.params.get('call_jaxpr') or eqn.params.get('fun_jaxpr')
                inner = closed_inner.jaxpr if hasattr(closed_inner, 'jaxpr') else closed_inner
                outs = walk(inner, flags, where)
            for v, d in zip(eqn.outvars, outs, strict=True):
                dynamic[v] = d
        return [is_dyn(v) for v in jaxpr.outvars]

    walk(closed.jaxpr, [True] * len(closed.jaxpr.invars), '')
    return found


def _is_literal(v: Any) -> bool:
    return isinstance(v, jax.extend.core.Literal)


# ----------------------------------------------------------------------------------------- pre / post-processing


def _letterbox(g: _Graph, images: str, cfg: pp.PostprocessConfig) -> tuple[str, list[str], str, str]:
    """uint8 NHWC images → NCHW float (B, 3, S, S) in [0, 1]; scale (4,) f32 (sx, sy, sx, sy); offset (4,) f32
    (dw, dh, dw, dh); size (2,) f32 (w - 1, h - 1) for clipping."""
    s = cfg.input_size
    shape = g.op('Shape', [images])
    dims = {k: g.op('Gather', [shape, g.const(i, np.int64)], axis=0) for k, i in (('b', 0), ('h', 1), ('w', 2))}
    hf, wf = (g.op('Cast', [dims[k]], to=g.onnx.TensorProto.DOUBLE) for k in ('h', 'w'))
    size_d = g.const(float(s), np.float64)
    if cfg.resize_mode == 'letterbox':
        scale = g.op('Min', [g.op('Div', [size_d, wf]), g.op('Div', [size_d, hf])])
        new_w = g.op('Cast', [g.op('Floor', [g.op('Mul', [scale, wf])])], to=g.onnx.TensorProto.INT64)
        new_h = g.op('Cast', [g.op('Floor', [g.op('Mul', [scale, hf])])], to=g.onnx.TensorProto.INT64)
        sx = sy = g.op('Cast', [scale], to=g.onnx.TensorProto.FLOAT)
    else:
        new_w = new_h = g.const(s, np.int64)
        sx = g.op('Cast', [g.op('Div', [size_d, wf])], to=g.onnx.TensorProto.FLOAT)
        sy = g.op('Cast', [g.op('Div', [size_d, hf])], to=g.onnx.TensorProto.FLOAT)
    size_i, two = g.const(s, np.int64), g.const(2, np.int64)
    dw = g.op('Div', [g.op('Sub', [size_i, new_w]), two])
    dh = g.op('Div', [g.op('Sub', [size_i, new_h]), two])
    vec = lambda *xs: g.op('Concat', [g.op('Unsqueeze', [x, g.const([0], np.int64)]) for x in xs], axis=0)
    x = g.op('Transpose', [g.op('Cast', [images], to=g.onnx.TensorProto.FLOAT)], perm=list(NCHW))
    c3 = g.const(3, np.int64)
    x = g.op('Resize', [x, '', '', vec(dims['b'], c3, new_h, new_w)], mode='linear',
             coordinate_transformation_mode='half_pixel')
    zero = g.const(0, np.int64)
    pads = vec(zero, zero, dh, dw, zero, zero, g.op('Sub', [g.op('Sub', [size_i, new_h]), dh]),
               g.op('Sub', [g.op('Sub', [size_i, new_w]), dw]))
    x = g.op('Pad', [x, pads, g.const(128.0, np.float32)], mode='constant')
    x = g.op('Div', [x, g.const(255.0, np.float32)])
    scale4 = vec(sx, sy, sx, sy)
    offset4 = g.op('Cast', [vec(dw, dh, dw, dh)], to=g.onnx.TensorProto.FLOAT)
    one = g.const(1.0, np.float32)
    limits = [g.op('Sub', [g.op('Cast', [dims[k]], to=g.onnx.TensorProto.FLOAT), one]) for k in ('w', 'h')]
    return x, [scale4, offset4], vec(*limits), dims['b']


def _decode_constants(cfg: pp.PostprocessConfig) -> tuple[np.ndarray, ...]:
    """(N, 2) cell (column, row), (N, 1) stride, (N, 2) anchor, (N, 1) scale_xy, candidates in
    postprocess.flatten_decoded order."""
    cells, strides, anchors, scales = [], [], [], []
    scale_xy = cfg.scale_xy or (1.0,) * len(cfg.strides)
    for stride, scale_anchors, s in zip(cfg.strides, cfg.anchors, scale_xy, strict=True):
        n, a = cfg.input_size // stride, len(scale_anchors)
        row, col, _ = np.meshgrid(np.arange(n), np.arange(n), np.arange(a), indexing='ij')
        cells.append(np.stack([col.ravel(), row.ravel()], axis=-1))
        strides.append(np.full((n * n * a, 1), stride))
        anchors.append(np.tile(np.asarray(scale_anchors), (n * n, 1)))
        scales.append(np.full((n * n * a, 1), s))
    cat = lambda xs: np.concatenate(xs).astype(np.float32)
    return cat(cells), cat(strides), cat(anchors), cat(scales)


def _postprocess(g: _Graph, raw: list[str], cfg: pp.PostprocessConfig, num_classes: int, geometry: list[str],
                 limits: str) -> list[str]:
    """Raw NHWC maps → (boxes (B, K, 4), scores (B, K), classes (B, K) int32, count (B,) int32)."""
    onnx = g.onnx
    width = 5 + num_classes
    flat = [g.op('Reshape', [r, g.const([0, -1, width], np.int64)]) for r in raw]
    pred = g.op('Concat', flat, axis=1)
    cell, stride, anchor, scale_xy = _decode_constants(cfg)
    n = len(cell)
    part = lambda lo, hi: g.op('Slice', [pred, g.const([lo], np.int64), g.const([hi], np.int64),
                                         g.const([2], np.int64)])
    offset = g.op('Sigmoid', [part(0, 2)])
    if np.any(scale_xy != 1.0):  # Darknet's scale_x_y (YOLOv4), as decode.decode: sigmoid(t) * s - (s - 1) / 2
        offset = g.op('Sub', [g.op('Mul', [offset, g.const(scale_xy)]), g.const(0.5 * (scale_xy - 1.0))])
    xy = g.op('Mul', [g.op('Add', [offset, g.const(cell)]), g.const(stride)])
    wh = g.op('Mul', [g.op('Exp', [g.op('Min', [part(2, 4), g.const(MAX_LOG_WH, np.float32)])]), g.const(anchor)])
    conf = g.op('Sigmoid', [part(4, 5)])
    probs = g.op('Sigmoid', [part(5, width)])
    half = g.op('Mul', [wh, g.const(0.5, np.float32)])
    xyxy = g.op('Concat', [g.op('Sub', [xy, half]), g.op('Add', [xy, half])], axis=2)
    scale4, offset4 = geometry
    xyxy = g.op('Div', [g.op('Sub', [xyxy, offset4]), scale4])
    lo = g.op('Max', [g.op('Slice', [xyxy, g.const([0], np.int64), g.const([2], np.int64), g.const([2], np.int64)]),
                      g.const(0.0, np.float32)])
    hi = g.op('Min', [g.op('Slice', [xyxy, g.const([2], np.int64), g.const([4], np.int64), g.const([2], np.int64)]),
                      limits])
    inverted = g.op('ReduceMax', [g.op('Cast', [g.op('Greater', [lo, hi])], to=onnx.TensorProto.FLOAT)], axes=[2],
                    keepdims=1)
    boxes = g.op('Where', [g.op('Cast', [inverted], to=onnx.TensorProto.BOOL), g.const(0.0, np.float32),
                           g.op('Concat', [lo, hi], axis=2)])
    wh_c = g.op('Sub', [g.op('Slice', [boxes, g.const([2], np.int64), g.const([4], np.int64), g.const([2], np.int64)]),
                        g.op('Slice', [boxes, g.const([0], np.int64), g.const([2], np.int64), g.const([2], np.int64)])])
    area = g.op('ReduceProd', [wh_c], axes=[2], keepdims=0)
    finite = g.op('Not', [g.op('IsInf', [area])])
    positive = g.op('And', [g.op('Greater', [area, g.const(0.0, np.float32)]), finite])
    classes = g.op('ArgMax', [probs], axis=2, keepdims=0)  # first index among ties, as jnp.argmax
    best = g.op('ReduceMax', [probs], axes=[2], keepdims=0)
    scores = g.op('Mul', [g.op('Squeeze', [conf, g.const([2], np.int64)]), best])
    mask = g.op('And', [positive, g.op('Greater', [scores, g.const(cfg.score_threshold, np.float32)])])
    masked = g.op('Where', [mask, scores, g.const(0.0, np.float32)])

    # Per-class NMS: candidate i scores only in its own class.
    onehot = g.op('Equal', [g.op('Unsqueeze', [classes, g.const([1], np.int64)]),
                            g.const(np.arange(num_classes, dtype=np.int64).reshape(1, -1, 1))])
    class_scores = g.op('Where', [onehot, g.op('Unsqueeze', [masked, g.const([1], np.int64)]),
                                  g.const(0.0, np.float32)])
    k = int(cfg.max_detections)
    selected = g.op('NonMaxSuppression', [boxes, class_scores, g.const([k], np.int64),
                                          g.const([cfg.iou_threshold], np.float32),
                                          g.const([cfg.score_threshold], np.float32)], center_point_box=0)
    where = g.op('Gather', [selected, g.const([0, 2], np.int64)], axis=1)  # (M, 2) (batch, candidate)
    ones = g.op('Expand', [g.const(1.0, np.float32), g.op('Slice', [g.op('Shape', [selected]), g.const([0], np.int64),
                                                                      g.const([1], np.int64)])])
    kept = g.op('ScatterND', [g.op('Mul', [masked, g.const(0.0, np.float32)]), where, ones])
    ranked = g.op('Where', [g.op('Greater', [kept, g.const(0.0, np.float32)]), masked, g.const(-1.0, np.float32)])
    top = min(k, n)
    values, idx = g.op('TopK', [ranked, g.const([top], np.int64)], n_out=2, axis=1, largest=1, sorted=1)
    valid = g.op('Greater', [values, g.const(0.0, np.float32)])
    idx4 = g.op('Expand', [g.op('Unsqueeze', [idx, g.const([2], np.int64)]), g.const([1, 1, 4], np.int64)])
    out_boxes = g.op('Where', [g.op('Unsqueeze', [valid, g.const([2], np.int64)]),
                               g.op('GatherElements', [boxes, idx4], axis=1), g.const(0.0, np.float32)])
    out_scores = g.op('Where', [valid, values, g.const(0.0, np.float32)])
    cls = g.op('Cast', [g.op('GatherElements', [classes, idx], axis=1)], to=onnx.TensorProto.INT32)
    out_classes = g.op('Where', [valid, cls, g.const(-1, np.int32)])
    if top < k:  # fewer candidates than slots: pad to K
        pad = lambda x, rank, value: g.op('Pad', [x, g.const([0, 0] + [0] * (rank - 2) + [0, k - top]
                                                             + [0] * (rank - 2), np.int64), value], mode='constant')
        out_boxes = g.op('Pad', [out_boxes, g.const([0, 0, 0, 0, k - top, 0], np.int64), g.const(0.0, np.float32)],
                         mode='constant')
        out_scores = pad(out_scores, 2, g.const(0.0, np.float32))
        out_classes = pad(out_classes, 2, g.const(-1, np.int32))
    count = g.op('ReduceSum', [g.op('Cast', [valid], to=onnx.TensorProto.INT32), g.const([1], np.int64)], keepdims=0)
    return [out_boxes, out_scores, out_classes, count]


def _prune(graph: _Graph, outputs: list[str]) -> None:
    """Drops nodes and initializers that no output depends on."""
    needed, kept = set(outputs), []
    for node in reversed(graph.nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    graph.nodes = kept[::-1]
    graph.initializers = [t for t in graph.initializers if t.name in needed]


def _network_jaxpr(model: Any, variables: dict, input_size: int) -> Any:
    """The closed jaxpr of the forward pass (inference mode, weights as constants) on (1, S, S, 3) float32."""
    variables = jax.device_get(variables)
    x = np.zeros((1, input_size, input_size, 3), np.float32)
    return jax.make_jaxpr(lambda x: model.apply(variables, x, train=False))(x)


def build_network_onnx(model: Any, variables: dict, input_size: int) -> Any:
    """The network alone as an onnx.ModelProto, for checking the conversion: input `x` float32 (batch, S, S, 3)
    in [0, 1] (NHWC, letterboxed), outputs `raw_0`, `raw_1`, ... the raw maps (batch, S/stride, S/stride,
    A*(5+C)), strides ascending, as `model.apply(variables, x, train=False)` returns them."""
    g = _Graph()
    onnx = g.onnx
    closed = _network_jaxpr(model, variables, input_size)
    converter = _NetworkConverter(g)
    x = g.op('Transpose', ['x'], perm=list(NCHW))
    raw = converter.run(closed.jaxpr, closed.consts, [_Value(nchw=x)])
    names = [f'raw_{i}' for i in range(len(raw))]
    for r, name in zip(raw, names, strict=True):
        g.nodes.append(onnx.helper.make_node('Identity', [converter.nhwc(r)], [name]))
    _prune(g, names)
    f32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, 'yolo_jax_network',
        [onnx.helper.make_tensor_value_info('x', f32, ['batch', input_size, input_size, 3])],
        [onnx.helper.make_tensor_value_info(n, f32, ['batch', *a.shape[1:]])
         for n, a in zip(names, closed.out_avals, strict=True)],
        initializer=g.initializers,
    )
    return _checked_model(graph)


def _checked_model(graph: Any) -> Any:
    """The onnx.ModelProto of `graph` at this module's opset and IR version 8, checked."""
    onnx = _onnx()
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid('', OPSET)],
                                   producer_name='yolo_jax')
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=False)
    return proto


def build_onnx(model: Any, variables: dict, cfg: pp.PostprocessConfig) -> Any:
    """The onnx.ModelProto of serving_fn (see the module docstring) for a BatchNorm-folded `model`."""
    if cfg.method != 'nms':
        raise ConfigError('config.eval.nms_method: ONNX export supports hard NMS only (ONNX has no soft-NMS op); '
                          f'got nms_method={cfg.method!r}')
    if cfg.tta:
        raise ConfigError(f'config.eval.tta={cfg.tta!r}: the ONNX graph has no test-time flips; export it with '
                          '--config.eval.tta=() (the other formats keep them)')
    if cfg.tta_sizes:
        raise ConfigError(f'config.eval.tta_sizes={cfg.tta_sizes!r}: the ONNX graph has no test-time sizes; export it '
                          'with --config.eval.tta_sizes=() (the other formats keep them)')
    g = _Graph()
    onnx = g.onnx
    s = cfg.input_size
    closed = _network_jaxpr(model, variables, s)
    x, geometry, limits, _ = _letterbox(g, 'images', cfg)
    converter = _NetworkConverter(g)
    raw = converter.run(closed.jaxpr, closed.consts, [_Value(nchw=x)])
    raw_names = [converter.nhwc(r) for r in raw]
    num_classes = int(closed.out_avals[0].shape[-1]) // len(cfg.anchors[0]) - 5
    outputs = _postprocess(g, raw_names, cfg, num_classes, geometry, limits)
    names = ('boxes', 'scores', 'classes', 'count')
    for out, name in zip(outputs, names, strict=True):
        g.nodes.append(onnx.helper.make_node('Identity', [out], [name]))
    _prune(g, list(names))
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    k = cfg.max_detections
    graph = onnx.helper.make_graph(
        g.nodes, 'yolo_jax_detector',
        [onnx.helper.make_tensor_value_info('images', onnx.TensorProto.UINT8, ['batch', 'height', 'width', 3])],
        [onnx.helper.make_tensor_value_info('boxes', f32, ['batch', k, 4]),
         onnx.helper.make_tensor_value_info('scores', f32, ['batch', k]),
         onnx.helper.make_tensor_value_info('classes', i32, ['batch', k]),
         onnx.helper.make_tensor_value_info('count', i32, ['batch'])],
        initializer=g.initializers,
    )
    return _checked_model(graph)


def export_onnx(model: Any, variables: dict, cfg: pp.PostprocessConfig, output: str | Path) -> Path:
    """Writes the ONNX model to `output` (a file) and returns its path."""
    proto = build_onnx(model, variables, cfg)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(proto.SerializeToString())
    return output
