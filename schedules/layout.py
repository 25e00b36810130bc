"""Relax pass: run pointwise and depthwise convolutions, and the elementwise ops between them, in
the channel-blocked NCHW[x]c layout.

Why our own pass and not ``relax.transform.ConvertLayout``: in TVM 0.27 ConvertLayout skips every
conv whose channel count is not a multiple of the block (MobileNetV2's 24, ShuffleNetV2's 58 on
AVX-512), stops at the ``call_tir`` that the ONNX frontend emits for ``Clip`` (so MobileNetV2 got
a layout_transform pair around every conv), and converts dense/grouped convs too, which TOPI then
cannot legalize. Here only the convs we schedule are converted, channels are zero-padded up to
the block, ONNX's Clip is recognised, and weights are packed in numpy at compile time.

Values stay blocked while their consumers are blocked convs or whitelisted elementwise ops; an
NCHW copy (``unpack``) is emitted lazily, once, just before the first consumer that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecompile.schedules import compute
from edgecompile.schedules.cpu import CpuInfo

CONV2D = "relax.nn.conv2d"
# Elementwise ops that map finite values to finite values: the padded channels may hold any
# finite garbage after them, which the next conv's zero weights cancel.
_UNARY = frozenset(
    {
        "relax.nn.relu",
        "relax.clip",
        "relax.sigmoid",
        "relax.tanh",
        "relax.nn.silu",
        "relax.nn.leakyrelu",
    }
)
_BINARY = frozenset(
    {"relax.add", "relax.subtract", "relax.multiply", "relax.maximum", "relax.minimum"}
)
_DIVIDE = "relax.divide"


@dataclass(frozen=True)
class ConvPlan:
    """How one conv2d of ``main`` is compiled: ``schedule`` is None when TVM's default stays."""

    op_index: int
    schedule: str | None
    reason: str = ""


@dataclass
class _Blocked:
    """A value available in NCHW[x]c: the blocked var, and its logical NCHW shape."""

    var: Any
    shape: tuple[int, int, int, int]

    @property
    def channels(self) -> int:
        return self.shape[1]


@dataclass(frozen=True)
class _Pack:
    """An operand to pack, once the op is known to be blockable (so no pack is wasted)."""

    arg: Any


@dataclass
class LayoutLog:
    """What the pass decided, per conv2d heavy-op index of ``main``."""

    plans: dict[int, ConvPlan] = field(default_factory=dict)


def static_shape(expr: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor-typed Relax expression, or None."""
    from tvm import tirx

    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    dims = getattr(shape, "values", shape)
    try:
        if not all(isinstance(d, tirx.IntImm | int) for d in dims):
            return None
        return tuple(int(d) for d in dims)
    except TypeError:
        return None


def _nchw_shape(expr: Any) -> tuple[int, int, int, int]:
    shape = static_shape(expr)
    assert shape is not None and len(shape) == 4, shape
    return shape  # type: ignore[return-value]


def _broadcasts(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """``shape`` (NCHW) broadcasts to ``out_shape`` without changing its rank."""
    if len(shape) != len(out_shape):
        return False
    return all(s in (1, o) for s, o in zip(shape, out_shape, strict=True))


def _dtype(expr: Any) -> str:
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def _op_name(call: Any) -> str:
    return str(getattr(call.op, "name", ""))


def classify_conv(call: Any) -> tuple[str | None, str]:
    """(schedule, reason): which of our schedules can run this conv2d, or None and why not."""
    attrs = call.attrs
    data, weight = call.args[0], call.args[1]
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None, "layout is not NCHW/OIHW"
    if _dtype(data) != "float32" or _dtype(weight) != "float32" or _dtype(call) != "float32":
        return None, "not float32"
    data_shape, weight_shape = static_shape(data), static_shape(weight)
    if data_shape is None or weight_shape is None or len(data_shape) != 4:
        return None, "dynamic shape"
    if not _is_const(weight):
        return None, "weights are not constants"
    groups = int(attrs.groups)
    out_channels, in_per_group, kernel_h, kernel_w = weight_shape
    if groups == 1 and (kernel_h, kernel_w) == (1, 1):
        if any(int(p) for p in attrs.padding):
            return None, "padded 1x1 conv"
        return compute.POINTWISE, ""
    if groups == data_shape[1] == out_channels and in_per_group == 1:
        return compute.DEPTHWISE, ""
    return None, "dense or grouped conv"


def _is_const(expr: Any) -> bool:
    from tvm import ir

    return isinstance(expr, ir.expr.GenericConst)


def _const_value(expr: Any) -> np.ndarray:
    return expr.value.numpy()


def pack_pointwise_weight(weight: np.ndarray, block: int) -> np.ndarray:
    """OIHW (1×1) → ``(CO/x, CI/x, x_in, x_out)``, zero-padding both channel counts."""
    out_c, in_c = weight.shape[:2]
    out_b, in_b = -(-out_c // block), -(-in_c // block)
    padded = np.zeros((out_b * block, in_b * block), dtype=weight.dtype)
    padded[:out_c, :in_c] = weight[:, :, 0, 0]
    return np.ascontiguousarray(padded.reshape(out_b, block, in_b, block).transpose(0, 2, 3, 1))


def pack_depthwise_weight(weight: np.ndarray, block: int) -> np.ndarray:
    """``(C, 1, KH, KW)`` → ``(C/x, KH, KW, x)``, zero-padding the channels."""
    channels, _, kernel_h, kernel_w = weight.shape
    blocks = -(-channels // block)
    padded = np.zeros((blocks * block, kernel_h, kernel_w), dtype=weight.dtype)
    padded[:channels] = weight[:, 0]
    return np.ascontiguousarray(
        padded.reshape(blocks, block, kernel_h, kernel_w).transpose(0, 2, 3, 1)
    )


def pack_channel_constant(value: np.ndarray, channels: int, block: int) -> np.ndarray | None:
    """A per-channel constant of shape ``(C,1,1)`` or ``(1,C,1,1)`` → ``(1, C/x, 1, 1, x)``."""
    if value.ndim not in (3, 4) or value.size != channels:
        return None
    if value.shape[-3] != channels:
        return None
    blocks = -(-channels // block)
    padded = np.zeros(blocks * block, dtype=value.dtype)
    padded[:channels] = value.reshape(-1)
    return padded.reshape(1, blocks, 1, 1, block)


def scalar_clip_op(func: Any) -> tuple[str, float | None] | None:
    """``("relax.maximum" | "relax.minimum", constant)`` if ``func`` is ONNX Clip's lowering.

    TVM's ONNX frontend lowers ``Clip`` to ``call_tir`` of a PrimFunc computing
    ``out[i] = max(x[i], bound[()])`` (bound a 0-d tensor argument; ``constant`` is None) or,
    for opset < 11, ``max(x[i], 0.0f)`` (``constant`` is the float). Recognising it keeps ReLU6
    in the blocked layout, where it fuses into the conv as an epilogue.
    """
    from tvm import ir, s_tir, tirx

    if not isinstance(func, tirx.PrimFunc) or len(func.params) not in (2, 3):
        return None
    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # no root block or not schedulable: not the frontend's Clip
        return None
    if len(blocks) != 1:
        return None
    body = sch.get(blocks[0]).body
    if not isinstance(body, tirx.BufferStore):
        return None
    value = body.value
    kinds = {tirx.Max: "relax.maximum", tirx.Min: "relax.minimum"}
    op = next((name for kind, name in kinds.items() if isinstance(value, kind)), None)
    first, second = getattr(value, "a", None), getattr(value, "b", None)
    if op is None or not isinstance(first, ir.TensorLoad):
        return None
    if len(first.indices) != len(body.indices) or not all(
        a.same_as(b) for a, b in zip(first.indices, body.indices, strict=True)
    ):
        return None
    if isinstance(second, ir.TensorLoad) and len(second.indices) == 0:
        return (op, None) if len(func.params) == 3 else None
    if isinstance(second, tirx.FloatImm):
        return (op, float(second.value)) if len(func.params) == 2 else None
    return None


def fold_scalar(expr: Any, bindings: dict[Any, Any], depth: int = 4) -> np.ndarray | None:
    """Evaluate a 0-d constant expression built from ``isnan``/``where`` in numpy, or None.

    The ONNX frontend guards every Clip bound as ``where(isnan(b), ∓inf, b)``. Folding those
    here spares FoldConstant from compiling one tiny LLVM function per bound (about 140 for
    MobileNetV2, ~3.5 s of its build).
    """
    from tvm import relax

    if _is_const(expr):
        value = _const_value(expr)
        return value if value.ndim == 0 else None
    if depth == 0:
        return None
    if isinstance(expr, relax.Var):
        bound = bindings.get(expr)
        return None if bound is None else fold_scalar(bound, bindings, depth - 1)
    if not isinstance(expr, relax.Call):
        return None
    args = [fold_scalar(arg, bindings, depth - 1) for arg in expr.args]
    if any(arg is None for arg in args):
        return None
    name = _op_name(expr)
    if name == "relax.isnan" and len(args) == 1:
        return np.isnan(args[0])
    if name == "relax.where" and len(args) == 3:
        return np.where(*args).astype(args[1].dtype)
    return None


def make_mutator() -> type:
    """Build the mutator class lazily: ``@relax.expr_functor.mutator`` needs TVM imported."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class BlockedLayoutMutator(relax.PyExprMutator):
        def __init__(
            self, mod: Any, cpu: CpuInfo, conv_indices: dict[Any, int], log: LayoutLog
        ) -> None:
            super().__init__(mod)
            self.mod = mod
            self.block = cpu.lanes
            self.conv_indices = conv_indices
            self.log = log
            self.blocked: dict[Any, _Blocked] = {}
            self.materialized: set[Any] = set()
            self.bindings = {
                binding.var: binding.value
                for block in mod["main"].body.blocks
                for binding in block.bindings
            }

        # -- uses of blocked values by ops that need NCHW ------------------------------------
        def _plain(self, var: Any) -> None:
            entry = self.blocked.get(var)
            if entry is None or var in self.materialized:
                return
            self.materialized.add(var)
            call = self.builder_.call_te(
                compute.unpack, entry.var, entry.channels, primfunc_name_hint="unpack_nchwc"
            )
            self.set_var_remap(var, self.builder_.emit(call, var.name))

        def visit_dataflow_var_(self, var: Any) -> Any:
            self._plain(var)
            return super().visit_dataflow_var_(var)

        def visit_var_(self, var: Any) -> Any:
            self._plain(var)
            return super().visit_var_(var)

        # -- bindings -------------------------------------------------------------------------
        def visit_var_binding_(self, binding: Any) -> None:
            value = binding.value
            result = None
            if isinstance(value, relax.Call) and self.builder_.current_block_is_dataflow():
                result = self._rewrite(binding.var, value)
            if result is None:
                super().visit_var_binding_(binding)
                return
            var = self.builder_.emit(result, binding.var.name + "_nchwc")
            entry = _Blocked(var, _nchw_shape(binding.var))
            self.blocked[binding.var] = entry
            if not isinstance(binding.var, relax.DataflowVar):
                # A dataflow block output: it must exist (in NCHW) under a non-dataflow var.
                self.materialized.add(binding.var)
                call = self.builder_.call_te(
                    compute.unpack, var, entry.channels, primfunc_name_hint="unpack_nchwc"
                )
                self.set_var_remap(binding.var, self.builder_.emit_output(call))

        def _rewrite(self, var: Any, call: Any) -> Any:
            """The blocked replacement of ``var = call``, or None to keep the NCHW op."""
            name = _op_name(call)
            if name == CONV2D:
                return self._conv(var, call)
            if name in _UNARY:
                return self._unary(call)
            if name in _BINARY or name == _DIVIDE:
                return self._binary(call, name)
            if name == "relax.call_tir":
                return self._call_tir(call)
            return None

        def _blocked_input(self, expr: Any) -> Any:
            """The NCHW[x]c version of ``expr``: reuse it if blocked, else emit a pack (once)."""
            entry = self.blocked.get(expr)
            if entry is not None:
                return entry.var
            plain = self.visit_expr(expr)
            call = self.builder_.call_te(
                compute.pack, plain, self.block, primfunc_name_hint="pack_nchwc"
            )
            packed = self.builder_.emit(call, "packed")
            if isinstance(expr, relax.Var):  # later consumers (a skip connection) reuse it
                self.blocked[expr] = _Blocked(packed, _nchw_shape(expr))
                self.materialized.add(expr)  # its NCHW form is the original var itself
            return packed

        def _conv(self, var: Any, call: Any) -> Any:
            index = self.conv_indices.get(var)
            schedule, reason = classify_conv(call)
            if index is not None:
                self.log.plans[index] = ConvPlan(index, schedule, reason)
            if schedule is None or index is None:
                return None
            attrs = call.attrs
            weight = _const_value(call.args[1])
            data = self._blocked_input(call.args[0])
            if schedule == compute.POINTWISE:
                packed = relax.const(pack_pointwise_weight(weight, self.block))
                strides = [int(s) for s in attrs.strides]
                expr = self.builder_.call_te(
                    compute.pointwise_nchwc,
                    data,
                    packed,
                    strides,
                    index,
                    primfunc_name_hint="pointwise_nchwc",
                )
            else:
                packed = relax.const(pack_depthwise_weight(weight, self.block))
                pads = [int(p) for p in attrs.padding]
                if len(pads) == 2:
                    pads = pads * 2
                expr = self.builder_.call_te(
                    compute.depthwise_nchwc,
                    data,
                    packed,
                    [int(s) for s in attrs.strides],
                    pads,
                    [int(d) for d in attrs.dilation],
                    index,
                    primfunc_name_hint="depthwise_nchwc",
                )
            return expr

        def _unary(self, call: Any) -> Any:
            entry = self.blocked.get(call.args[0])
            if entry is None:
                return None
            rest = [self.visit_expr(arg) for arg in call.args[1:]]
            return relax.Call(call.op, [entry.var, *rest], call.attrs)

        def _binary(self, call: Any, name: str) -> Any:
            lhs, rhs = call.args
            out_shape = static_shape(call)
            if lhs not in self.blocked and rhs not in self.blocked:
                return None
            if out_shape is None or len(out_shape) != 4:
                return None
            operands = []
            for position, arg in enumerate((lhs, rhs)):
                divisor = name == _DIVIDE and position == 1
                operand = self._binary_operand(arg, out_shape, divisor=divisor)
                if operand is None:
                    return None
                operands.append(operand)
            # Packs are emitted only once both operands are known to be blockable.
            resolved = [
                self._blocked_input(op.arg) if isinstance(op, _Pack) else op for op in operands
            ]
            return relax.Call(call.op, resolved, call.attrs)

        def _binary_operand(self, arg: Any, out_shape: tuple[int, ...], divisor: bool) -> Any:
            """The blocked form of one operand: an Expr, a :class:`_Pack` to emit, or None."""
            channels = out_shape[1]
            entry = self.blocked.get(arg)
            if entry is not None:
                # A blocked operand must carry the output's channels in its lanes: broadcasting
                # a one-channel tensor would broadcast lanes, not channels.
                if entry.channels == channels and _broadcasts(entry.shape, out_shape):
                    return entry.var
                return None
            shape = static_shape(arg)
            if shape is None:
                return None
            if all(d == 1 for d in shape):  # a scalar broadcast
                if divisor and not (_is_const(arg) and np.all(_const_value(arg) != 0)):
                    return None
                return self.visit_expr(arg)
            if divisor:  # padded lanes would divide by zero and poison the next conv
                return None
            if _is_const(arg):
                packed = pack_channel_constant(_const_value(arg), channels, self.block)
                return None if packed is None else relax.const(packed)
            if len(shape) == 4 and shape[1] == channels and _broadcasts(shape, out_shape):
                return _Pack(arg)
            return None

        def _call_tir(self, call: Any) -> Any:
            callee, args = call.args[0], getattr(call.args[1], "fields", None)
            if not args or not isinstance(callee, tvm.ir.GlobalVar):
                return None
            entry = self.blocked.get(args[0])
            if entry is None or callee not in self.mod.get_global_vars():
                return None
            match = scalar_clip_op(self.mod[callee])
            if match is None:
                return None
            op, constant = match
            if constant is None:
                folded = fold_scalar(args[1], self.bindings)
                if folded is None:
                    bound = self.visit_expr(args[1])
                else:
                    bound = relax.const(folded, _dtype(args[1]))
            else:
                bound = relax.const(constant, _dtype(args[0]))
            return relax.Call(tvm.ir.Op.get(op), [entry.var, bound])

    return BlockedLayoutMutator
