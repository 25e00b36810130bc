"""Relax pass: run convolutions (pointwise, depthwise, grouped, dense K×K), the elementwise ops
(PReLU and inference batch norms too, their per-channel constants packed by lane; a batch norm
left in NCHW becomes a multiply-add with its constants folded), pools, resizes (ESPNet v2's
decoder), torch's adaptive average pools as exported (its pyramid), channel concats and
ShuffleNet's channel shuffles between them in the channel-blocked NCHW[x]c layout; and the
classifier's matmul on a pre-packed weight.

Why our own pass and not ``relax.transform.ConvertLayout``: in TVM 0.27 ConvertLayout skips every
conv whose channel count is not a multiple of the block (MobileNetV2's 24, ShuffleNetV2's 58 on
AVX-512), stops at the ``call_tir`` that the ONNX frontend emits for ``Clip`` (so MobileNetV2 got
a layout_transform pair around every conv), and converts dense/grouped convs too, which TOPI then
cannot legalize. Here only the convs we schedule are converted, channels are zero-padded up to
the block, ONNX's Clip is recognised, and weights are packed in numpy at compile time.

Values stay blocked while their consumers are blocked convs or whitelisted ops; an NCHW copy
(``unpack``) is emitted lazily, once, just before the first consumer that needs it.

A blocked value carries a :class:`ChannelOrder` (which lane holds which channel): packs make the
plain order, a grouped conv may pad each group to whole blocks, and a channel shuffle only
permutes the order, so it costs no pass over memory: consumers read through the order (weights
packed by lane; a grouped conv gathers its group's channels through a table). A channel slice
(ShuffleNet v2's split) is likewise a subset of the lanes of the same tensor; the concat that
feeds a shuffle and split picks its lane order so that each half of the split fills whole blocks
of its own, which a 1×1 conv reads in place
(:func:`~edgecompile.schedules.plan.planned_concat_orders`).

This module is the rewrite itself (:class:`BlockedLayoutMutator`, run as :func:`blocked_layout`);
what it decides per op is in :mod:`~edgecompile.schedules.plan`, the frontend idioms it
recognises in :mod:`~edgecompile.schedules.patterns`, the lane orders in
:mod:`~edgecompile.schedules.channels` and the weight packing in
:mod:`~edgecompile.schedules.packing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax, s_tir, topi

from edgecompile.schedules import compute
from edgecompile.schedules.analysis import (
    CONV2D,
    CONV2D_TRANSPOSE,
    MATMUL,
    all_readers,
    bindings_of,
    broadcasts,
    const_value,
    conv_indices,
    dtype_of,
    heavy_op_indices,
    is_const,
    nchw_shape,
    op_name,
    static_shape,
    transposed_conv_indices,
    uses,
)
from edgecompile.schedules.channels import ChannelOrder, channel_table, grouped_layout
from edgecompile.schedules.cpu import CpuInfo
from edgecompile.schedules.grouped_uses import ANY_ORDER, grouped_output_uses
from edgecompile.schedules.packing import (
    batch_norm_affine,
    gemv_lanes,
    pack_channel_constant,
    pack_dense_weight,
    pack_depthwise_weight,
    pack_grouped_weight,
    pack_matmul_weight,
    pack_pointwise_weight,
    pack_transposed_weight,
)
from edgecompile.schedules.patterns import (
    WindowGather,
    channel_slice,
    fold_scalar,
    pre_activation,
    reshaped_constant,
    scalar_clip_op,
    shared_relu_input,
    shuffle_chain,
    window_chains,
)
from edgecompile.schedules.plan import (
    CEIL_MODE_AVERAGE,
    DILATED_POOL,
    MODEL_INPUT,
    PIXELS_OUTPUT,
    PLAIN_INPUT,
    ConvPlan,
    LayoutLog,
    classify_conv,
    classify_transposed_conv,
    grouped_schedule,
    no_blocked_form,
    planned_concat_orders,
)

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
_POOLS = frozenset({"relax.nn.max_pool2d", "relax.nn.avg_pool2d"})
# Per-channel elementwise ops with constant parameters (ESPNet v2's activation after every merge):
# blocked with their parameters packed by lane, zero in padding lanes.
_PRELU = "relax.nn.prelu"
_BATCH_NORM = "relax.nn.batch_norm"
# ESPNet v2's decoder upsampling: resampled lane by lane in NCHW[x]c, as unpacking around TVM's
# NCHW resize was 42% of espnet_v2_seg's time.
_RESIZE = "relax.image.resize2d"
#: Ops the pass blocks when their input is blocked: a value one of them computes is in NCHW
#: because its input is (see :meth:`BlockedLayoutMutator._why_plain`).
_FOLLOW_INPUT = (
    _UNARY
    | _BINARY
    | _POOLS
    | {
        _DIVIDE,
        _PRELU,
        _BATCH_NORM,
        _RESIZE,
        "relax.call_tir",
        "relax.concat",
        "relax.mean",
        "relax.permute_dims",
        "relax.reshape",
        "relax.strided_slice",
    }
)


#: Ops that read a blocked input as it is (a conv, or one blocked because its input is): a pixel
#: conv's result read only by these is worth packing in the conv's own kernel.
_TAKES_BLOCKED = (_FOLLOW_INPUT - {"relax.call_tir", "relax.permute_dims", "relax.reshape"}) | {
    CONV2D
}


@dataclass
class _Blocked:
    """A value available in NCHW[x]c: the blocked var, its logical NCHW shape, and which lane
    holds which channel."""

    var: Any
    shape: tuple[int, int, int, int]
    order: ChannelOrder

    @property
    def channels(self) -> int:
        return self.shape[1]


@dataclass(frozen=True)
class _Pack:
    """An operand to pack, once the op is known to be blockable (so no pack is wasted)."""

    arg: Any


@relax.expr_functor.mutator
class BlockedLayoutMutator(relax.PyExprMutator):
    """Rewrites ``main`` binding by binding: an op whose input is blocked (or a conv we
    schedule) is replaced by its NCHW[x]c form, recorded in :attr:`blocked` with its channel
    order; any other use of a blocked value reads an NCHW copy made on first need. Logs the
    plan of every heavy op it decides on in ``log``."""

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
        self.bindings = bindings_of(mod["main"])
        self.params = set(mod["main"].params)
        self.use_counts, self.readers = uses(mod["main"])
        self.matmul_indices = heavy_op_indices(mod, frozenset({MATMUL}))
        self.pool_indices = heavy_op_indices(mod, _POOLS)
        self.transposed_indices = transposed_conv_indices(mod)
        # Channel shuffles folded into the channel order: the reshape/transpose bindings
        # inside one are dropped, its result maps to (source var, groups).
        self.shuffle_inner: set[Any] = set()
        self.shuffles: dict[Any, tuple[Any, int]] = {}
        # Adaptive average pools as torch exports them (transpose → gather → transpose → mean)
        # of a blocked value: the chain's vars are dropped, its mean becomes one blocked kernel
        # (:meth:`_window_mean`). Its first transpose alone was an unpack to H, W, N, C, 9.8%
        # of espnet_v2_seg's time.
        self.all_readers = all_readers(mod["main"])
        self.window_inner: set[Any] = set()
        self.window_means: dict[Any, WindowGather] = {}
        # The same chain without the mean (windows of several sizes, masked and summed in
        # NCHW after it): its gather reads the blocked value (:meth:`_window_gather`).
        self.window_gathers: dict[Any, WindowGather] = {}
        self.concat_orders = planned_concat_orders(mod["main"], self.block)
        self.grouped_uses = grouped_output_uses(mod["main"], self.block)
        # Blocked batch norms: the tuple var → (its normalized output, blocked, and the call);
        # the tuple itself is never emitted, its fields are (see :meth:`_batch_norm_field`).
        self.batch_norms: dict[Any, tuple[_Blocked, Any]] = {}
        # The same for batch norms of NCHW values: the tuple var → (its NCHW output, the call).
        self.plain_norms: dict[Any, tuple[Any, Any]] = {}
        # Ops the rewrite emitted in NCHW itself (a grouped conv vectorized over pixels).
        self.plain_results: set[Any] = set()
        # PReLUs applied, blocked, inside the pixel conv they follow (:meth:`_pixels_prelu`):
        # their bindings are dropped.
        self.fused_prelus: set[Any] = set()

    # -- uses of blocked values by ops that need NCHW ------------------------------------
    def _unpack(self, entry: _Blocked, *, fusable: bool = True) -> Any:
        """The call unpacking ``entry`` to NCHW; unless ``fusable``, FuseOps leaves it a kernel
        of its own."""
        if entry.order.is_identity(self.block):
            call = self.builder_.call_te(
                compute.unpack, entry.var, entry.channels, primfunc_name_hint="unpack_nchwc"
            )
        else:
            lanes = relax.const(entry.order.lanes.astype("int32"))
            call = self.builder_.call_te(
                compute.unpack_gather, entry.var, lanes, primfunc_name_hint="unpack_nchwc"
            )
        return call if fusable else self._kept_apart(call, "unpack_nchwc")

    def _kept_apart(self, call: Any, name: str) -> Any:
        """``call`` (to a PrimFunc ``call_te`` made) through a copy of its function that FuseOps
        may not fuse: a kernel of its own. A copy, not the deduplicated function itself:
        another call of the same shape may share that one and should still fuse."""
        func = self.builder_.get()[call.args[0]].with_attr("op_pattern", compute.OPAQUE_PATTERN)
        callee = self.builder_.add_func(func, name)
        return relax.call_tir(callee, call.args[1], call.ty_args[0])

    def _plain(self, var: Any, *, fusable: bool = True) -> None:
        entry = self.blocked.get(var)
        if entry is None or var in self.materialized:
            return
        self.materialized.add(var)
        unpacked = self._unpack(entry, fusable=fusable)
        self.set_var_remap(var, self.builder_.emit(unpacked, var.name))

    def visit_dataflow_var_(self, var: Any) -> Any:
        self._plain(var)
        return super().visit_dataflow_var_(var)

    def visit_var_(self, var: Any) -> Any:
        self._plain(var)
        return super().visit_var_(var)

    # -- bindings -------------------------------------------------------------------------
    def visit_var_binding_(self, binding: Any) -> None:
        if binding.var in self.shuffle_inner or binding.var in self.window_inner:
            return
        if binding.var in self.fused_prelus:
            return
        value = binding.value
        result = None
        if binding.var in self.window_means:
            self._window_mean(binding.var)
            return
        if binding.var in self.window_gathers:
            self._window_gather(binding.var)
            return
        if self._shape_of_dropped(binding.var, value):
            return
        if binding.var in self.shuffles:
            source, groups = self.shuffles[binding.var]
            entry = self.blocked[source]
            self._register(binding.var, entry.var, entry.order.shuffled(groups))
            return
        if isinstance(value, relax.TupleGetItem) and (
            value.tuple_value in self.batch_norms or value.tuple_value in self.plain_norms
        ):
            self._batch_norm_field(binding.var, value)
            return
        if isinstance(value, relax.Call) and self.builder_.current_block_is_dataflow():
            if op_name(value) == MATMUL and self._matmul(binding.var, value):
                return
            if op_name(value) == _BATCH_NORM and self._batch_norm(binding.var, value):
                return
            self._find_shuffle(binding.var, value)
            self._find_window_mean(binding.var, value)
            if binding.var in self.shuffle_inner or binding.var in self.window_inner:
                return
            if self._slice(binding.var, value):
                return
            result = self._rewrite(binding.var, value)
            if binding.var in self.plain_results:
                return
        if result is None:
            super().visit_var_binding_(binding)
            return
        expr, order = result
        var = self.builder_.emit(expr, binding.var.name + "_nchwc")
        self._register(binding.var, var, order)

    def _slice(self, var: Any, call: Any) -> bool:
        """A channel slice of a blocked value is the same tensor seen through a subset of
        its lanes (:meth:`ChannelOrder.sliced`): no data moves."""
        entry = self.blocked.get(call.args[0])
        span = channel_slice(call)
        if entry is None or span is None:
            return False
        self._register(var, entry.var, entry.order.sliced(*span))
        return True

    def _register(self, original: Any, var: Any, order: ChannelOrder) -> None:
        entry = _Blocked(var, nchw_shape(original), order)
        self.blocked[original] = entry
        if not isinstance(original, relax.DataflowVar):
            # A dataflow block output: it must exist (in NCHW) under a non-dataflow var.
            self.materialized.add(original)
            self.set_var_remap(original, self.builder_.emit_output(self._unpack(entry)))

    def _matmul(self, var: Any, call: Any) -> bool:
        """Emit our packed matmul for ``x @ W`` with a constant ``W`` (or ``permute_dims``
        of one, as ONNX's Gemm arrives); False to keep TVM's."""
        index = self.matmul_indices.get(var)
        data, weight = call.args
        data_shape, out_shape = static_shape(data), static_shape(var)
        if weight in self.bindings and op_name(self.bindings[weight]) == "relax.permute_dims":
            permute = self.bindings[weight]
            axes = [int(a) for a in permute.attrs.axes] if permute.attrs.axes else [1, 0]
            if axes != [1, 0] or not is_const(permute.args[0]):
                return self._declined(index, "weights are not a constant matrix")
            matrix = const_value(permute.args[0]).T
        elif is_const(weight):
            matrix = const_value(weight)
        else:
            return self._declined(index, "weights are not a constant matrix")
        if (
            index is None
            or data_shape is None
            or len(data_shape) != 2
            or matrix.ndim != 2
            or out_shape != (data_shape[0], matrix.shape[1])
            or {dtype_of(data), str(matrix.dtype), dtype_of(var)} != {"float32"}
        ):
            return self._declined(index, "not a static float32 (N, K) x (K, M) matmul")
        lanes = gemv_lanes(matrix.shape[1], self.block)
        self.log.plans[index] = ConvPlan(index, compute.MATMUL)
        expr = self.builder_.call_te(
            compute.packed_matmul,
            self.visit_expr(data),
            relax.const(pack_matmul_weight(np.ascontiguousarray(matrix), lanes)),
            index,
            primfunc_name_hint="matmul_packed",
        )
        if isinstance(var, relax.DataflowVar):
            self.set_var_remap(var, self.builder_.emit(expr, var.name))
        else:
            self.set_var_remap(var, self.builder_.emit_output(expr, var.name))
        return True

    def _declined(self, index: int | None, reason: str) -> bool:
        """Log why a heavy op keeps TVM's lowering; False (for :meth:`_matmul`)."""
        if index is not None:
            self.log.plans[index] = ConvPlan(index, None, reason)
        return False

    def _why_plain(self, expr: Any) -> str:
        """Why ``expr`` is in NCHW: the model's input, a conv the pass left in NCHW (its
        reason), or an op the pass never blocks -- found by walking back through the ops that
        are blocked only when their input is, and were not because it was not."""
        while True:
            if expr in self.params:
                return MODEL_INPUT
            value = self.bindings.get(expr)
            if isinstance(value, relax.TupleGetItem):  # a batch norm's output
                expr = value.tuple_value
                continue
            if not isinstance(value, relax.Call):
                return "its producer is not an op of main"
            name = op_name(value)
            if name in (CONV2D, CONV2D_TRANSPOSE):
                index = self.conv_indices.get(expr, self.transposed_indices.get(expr, -1))
                plan = self.log.plans.get(index)
                if plan is not None and plan.schedule == compute.GROUPED_PIXELS:
                    return PIXELS_OUTPUT
                return plan.reason if plan is not None and plan.reason else no_blocked_form(name)
            if name not in _FOLLOW_INPUT:
                return no_blocked_form(name)
            inputs = [
                item
                for arg in value.args
                for item in (arg.fields if isinstance(arg, relax.Tuple) else [arg])
                if isinstance(item, relax.Var)
            ]
            plain = [item for item in inputs if item not in self.blocked]
            if not plain:  # its inputs are blocked: the op itself declined
                return f"{name} could not be blocked here"
            expr = plain[0]

    def _find_shuffle(self, var: Any, call: Any) -> None:
        """Spot a channel shuffle (:func:`shuffle_chain`) of a blocked value."""
        if op_name(call) != "relax.reshape" or call.args[0] not in self.blocked:
            return
        chain = shuffle_chain(var, call, self.use_counts, self.readers)
        if chain is None:
            return
        groups, (split, permuted, merged) = chain
        self.shuffle_inner.update((split, permuted))
        self.shuffles[merged] = (call.args[0], groups)

    def _find_window_mean(self, var: Any, call: Any) -> None:
        """Spot torch's adaptive average pools (:func:`window_chains`) of a blocked value."""
        if op_name(call) != "relax.permute_dims" or call.args[0] not in self.blocked:
            return
        chains = window_chains(var, call, self.bindings, self.all_readers)
        for chain in chains or []:
            self.window_inner.update(chain.inner)
            found = self.window_means if chain.averaged else self.window_gathers
            found[chain.result] = chain

    def _window_mean(self, var: Any) -> None:
        """The mean that ends an averaged :func:`window_chains` chain:
        :func:`compute.window_mean_nchwc` of the blocked source, in its lane order (each lane is
        averaged on its own)."""
        chain = self.window_means[var]
        entry = self.blocked[chain.source]
        expr = self.builder_.call_te(
            compute.window_mean_nchwc,
            entry.var,
            relax.const(chain.rows),
            relax.const(chain.cols),
            primfunc_name_hint="window_mean_nchwc",
        )
        self._register(var, self.builder_.emit(expr, var.name + "_nchwc"), entry.order)

    def _window_gather(self, var: Any) -> None:
        """The last transpose of a :func:`window_chains` chain without its mean: the windows
        gathered from the blocked source into NCHW-like ``(N, C, OH, KH, OW, KW)``
        (:func:`compute.window_gather`, through its lane order)."""
        chain = self.window_gathers[var]
        entry = self.blocked[chain.source]
        expr = self.builder_.call_te(
            compute.window_gather,
            entry.var,
            relax.const(chain.rows),
            relax.const(chain.cols),
            relax.const(entry.order.lanes.astype("int32")),
            primfunc_name_hint="window_gather",
        )
        if isinstance(var, relax.DataflowVar):
            self.set_var_remap(var, self.builder_.emit(expr, var.name))
        else:
            self.set_var_remap(var, self.builder_.emit_output(expr, var.name))

    def _shape_of_dropped(self, var: Any, value: Any) -> bool:
        """``shape_of`` a var of a dropped chain (the frontend's index normalization reads
        it): its static shape instead."""
        if not isinstance(value, relax.Call) or op_name(value) != "relax.shape_of":
            return False
        if value.args[0] not in self.window_inner:
            return False
        shape = relax.ShapeExpr([int(d) for d in static_shape(value.args[0])])
        self.set_var_remap(var, self.builder_.emit(shape, var.name))
        return True

    def _rewrite(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
        """The blocked replacement of ``var = call`` and its channel order, or None to
        keep the NCHW op."""
        name = op_name(call)
        if name == CONV2D:
            return self._conv(var, call)
        if name == CONV2D_TRANSPOSE:
            return self._transposed_conv(var, call)
        if name in _UNARY:
            return self._unary(call)
        if name in _BINARY or name == _DIVIDE:
            return self._binary(call, name)
        if name == "relax.call_tir":
            return self._call_tir(call)
        if name == "relax.mean":
            return self._global_mean(call)
        if name == "relax.concat":
            return self._concat(var, call)
        if name in _POOLS:
            return self._pool(var, call)
        if name == _PRELU:
            return self._prelu(call)
        if name == _RESIZE:
            return self._resize(var, call)
        return None

    def _global_mean(self, call: Any) -> tuple[Any, ChannelOrder] | None:
        """Global average pool over H, W stays blocked: the unpack after it is tiny."""
        entry = self.blocked.get(call.args[0])
        if entry is None or not call.attrs.keepdims or call.attrs.axis is None:
            return None
        if sorted(int(a) % 4 for a in call.attrs.axis) != [2, 3]:
            return None
        _, _, height, width = entry.shape
        expr = self.builder_.call_te(
            compute.pool_nchwc,
            entry.var,
            "avg",
            [height, width],
            [1, 1],
            [0, 0, 0, 0],
            True,
            None,
            primfunc_name_hint="mean_nchwc",
        )
        return expr, entry.order

    def _concat(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
        """Channel concat of blocked values: a copy of whole blocks where every part fills
        whole blocks, else a lane gather into the plain channel order or, when the result
        is only read through channel slices, the order :func:`planned_concat_orders`
        chose. NCHW parts are packed first where that moves fewer channels than unpacking
        the blocked ones would."""
        parts = getattr(call.args[0], "fields", None)
        if not parts or int(call.attrs.axis) % 4 != 1:
            return None
        shapes = [static_shape(part) for part in parts]
        if any(shape is None or len(shape) != 4 for shape in shapes):
            return None
        if len({(shape[0], *shape[2:]) for shape in shapes if shape}) != 1:
            return None
        # With NCHW parts, the concat is blocked only when packing them moves fewer channels
        # than the NCHW concat would unpack: the blocked parts without an NCHW copy already.
        # ESPNet joins its 3-channel pooled image to 16-131 blocked channels: unpacking those
        # cost a pass over them, and left the BN + PReLU after the concat in NCHW on TVM's
        # lowering (1/6 of the model's time). CondenseNet joins its NCHW features (or a stem
        # its gather already unpacked) to each new layer's output: that stays in NCHW.
        plain = [part for part in parts if part not in self.blocked]
        to_unpack = sum(
            self.blocked[part].channels
            for part in parts
            if part in self.blocked and part not in self.materialized
        )
        batch_one = shapes[0][0] == 1
        if plain and sum(nchw_shape(part)[1] for part in plain) >= to_unpack:
            if batch_one:
                # Unpacked in kernels of their own, so the NCHW concat is TOPI's alone and
                # :mod:`concat_in_place` can drop it: each part then lands in its slab of the
                # output. Fused into the concat, the unpack made one kernel that copied every
                # part again: CondenseNet's dense blocks re-copied their growing features at
                # each layer (27 unpack + concat kernels, 5.8% of condensenet74_c4_g4).
                for part in parts:
                    self._plain(part, fusable=False)
            return None
        # An NCHW part that fills whole blocks is packed in a kernel of its own, as the NCHW
        # concat's blocked parts are unpacked above, so a concat of whole blocks is placed
        # (CondenseNet's training-form dense blocks packed each new layer's NCHW output in one
        # kernel with a copy of all the blocked features). A part that does not (ESPNet's
        # 3-channel image) needs the lane-permuting concat anyway: its pack stays fusable.
        entries = [
            self._blocked_input(
                part, fusable=not (batch_one and nchw_shape(part)[1] % self.block == 0)
            )
            for part in parts
        ]
        channels = sum(entry.channels for entry in entries)
        identity = ChannelOrder.identity(channels, self.block)
        order = self.concat_orders.get(var, identity)
        whole_blocks = order.same(identity) and all(
            entry.order.is_identity(self.block) and entry.channels % self.block == 0
            for entry in entries
        )
        if whole_blocks:
            return relax.op.concat([entry.var for entry in entries], axis=1), order
        # Output lane → (part, lane of that part): the concat is a permute of whole vectors.
        sources = [(i, int(lane)) for i, entry in enumerate(entries) for lane in entry.order.lanes]
        by_lane: list[tuple[int, int] | None] = [None] * order.total
        for channel, lane in enumerate(order.lanes):
            by_lane[int(lane)] = sources[channel]
        func = compute.concat_permute(
            [static_shape(entry.var) for entry in entries], by_lane, dtype_of(call)
        )
        callee = self.builder_.add_func(func, "concat_nchwc")
        shape = (*entries[0].shape[:1], order.total // self.block, *entries[0].shape[2:])
        out_type = relax.TensorType([*shape, self.block], dtype_of(call))
        expr = relax.call_tir(callee, relax.Tuple([entry.var for entry in entries]), out_type)
        return expr, order

    def _pool(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
        """Max/average pooling in NCHW[x]c: ours without dilation (and for max also in
        ceil mode), else TVM's pool, which takes the blocked layout as is."""
        index = self.pool_indices.get(var)
        entry = self.blocked.get(call.args[0])
        attrs = call.attrs
        if (attrs.layout, attrs.out_layout) != ("NCHW", "NCHW"):
            self._declined(index, "layout is not NCHW")
            return None
        if entry is None:
            self._declined(index, PLAIN_INPUT + self._why_plain(call.args[0]))
            return None
        pads = [int(d) for d in attrs.padding]
        pads = pads * 2 if len(pads) == 2 else pads
        average = op_name(call) == "relax.nn.avg_pool2d"
        include_pad = bool(attrs.count_include_pad) if average else True
        ours = not (attrs.ceil_mode and average)
        dilated = any(int(d) != 1 for d in attrs.dilation)
        if ours and not dilated:
            if index is not None:
                self.log.plans[index] = ConvPlan(index, compute.POOL)
            expr = self.builder_.call_te(
                compute.pool_nchwc,
                entry.var,
                "avg" if average else "max",
                [int(d) for d in attrs.pool_size],
                [int(d) for d in attrs.strides],
                pads,
                include_pad,
                index,
                bool(attrs.ceil_mode),
                primfunc_name_hint="pool_nchwc",
            )
            return expr, entry.order
        self._declined(index, DILATED_POOL if dilated else CEIL_MODE_AVERAGE)
        blocked = f"NCHW{self.block}c"
        options = {
            "pool_size": [int(d) for d in attrs.pool_size],
            "strides": [int(d) for d in attrs.strides],
            "padding": pads,
            "dilation": [int(d) for d in attrs.dilation],
            "ceil_mode": bool(attrs.ceil_mode),
            "layout": blocked,
            "out_layout": blocked,
        }
        if average:
            return relax.op.nn.avg_pool2d(
                entry.var, count_include_pad=include_pad, **options
            ), entry.order
        return relax.op.nn.max_pool2d(entry.var, **options), entry.order

    def _blocked_input(self, expr: Any, *, fusable: bool = True) -> _Blocked:
        """The NCHW[x]c version of ``expr``: reuse it if blocked, else emit a pack (once; a
        kernel of its own unless ``fusable``)."""
        entry = self.blocked.get(expr)
        if entry is not None:
            return entry
        plain = self.visit_expr(expr)
        call = self.builder_.call_te(
            compute.pack, plain, self.block, primfunc_name_hint="pack_nchwc"
        )
        if not fusable:
            call = self._kept_apart(call, "pack_nchwc")
        packed = self.builder_.emit(call, "packed")
        entry = _Blocked(
            packed,
            nchw_shape(expr),
            ChannelOrder.identity(nchw_shape(expr)[1], self.block),
        )
        if isinstance(expr, relax.Var):  # later consumers (a skip connection) reuse it
            self.blocked[expr] = entry
            self.materialized.add(expr)  # its NCHW form is the original var itself
        return entry

    def _activated_pack(self, expr: Any, prologue: Any) -> _Blocked:
        """``expr`` (NCHW) packed with a conv's pre-activation applied on the way
        (:func:`compute.pack`): for the one conv that reads it, so it is not kept for reuse."""
        call = self.builder_.call_te(
            compute.pack,
            self.visit_expr(expr),
            self.block,
            prologue=prologue,
            primfunc_name_hint="pack_nchwc",
        )
        channels = nchw_shape(expr)[1]
        return _Blocked(
            self.builder_.emit(call, "packed"),
            nchw_shape(expr),
            ChannelOrder.identity(channels, self.block),
        )

    def _packed_as(self, expr: Any, order: ChannelOrder) -> Any:
        """``expr`` (NCHW) packed into ``order``'s lanes."""
        if order.is_identity(self.block):
            return self._blocked_input(expr).var
        channel_of_lane = relax.const(order.channel_of_lane().astype("int32"))
        call = self.builder_.call_te(
            compute.pack_gather,
            self.visit_expr(expr),
            channel_of_lane,
            self.block,
            primfunc_name_hint="pack_nchwc",
        )
        return self.builder_.emit(call, "packed")

    def _conv_input(self, expr: Any) -> tuple[Any, ChannelOrder]:
        """Input of a K×K conv: blocked if it already is, else plain NCHW (its channels are
        read as broadcast scalars, for which NCHW is as good; a pack would be a copy)."""
        entry = self.blocked.get(expr)
        if entry is not None:
            return entry.var, entry.order
        channels = nchw_shape(expr)[1]
        return self.visit_expr(expr), ChannelOrder(np.arange(channels), channels)

    def _conv(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
        index = self.conv_indices.get(var)
        schedule, reason = classify_conv(call)
        use = self.grouped_uses.get(var, ANY_ORDER)
        if schedule == compute.GROUPED:
            schedule = grouped_schedule(call, self.block, use)
        if index is not None:
            self.log.plans[index] = ConvPlan(index, schedule, reason)
        if schedule is None or index is None:
            return None
        attrs = call.attrs
        weight = const_value(call.args[1])
        strides = [int(s) for s in attrs.strides]
        pads = [int(p) for p in attrs.padding]
        pads = pads * 2 if len(pads) == 2 else pads
        dilation = [int(d) for d in attrs.dilation]
        if schedule == compute.POINTWISE:
            source, prologue = self._prologue_input(call.args[0])
            entry = (
                self._blocked_input(call.args[0])
                if prologue is None
                else self._activated_pack(source, prologue)
            )
            # A channel slice reads only the blocks its lanes occupy, not the whole tensor.
            first, end = entry.order.block_span(self.block)
            in_order = entry.order.within(first, end, self.block)
            packed = relax.const(pack_pointwise_weight(weight, self.block, in_order))
            expr = self.builder_.call_te(
                compute.pointwise_nchwc,
                entry.var,
                packed,
                strides,
                index,
                first,
                primfunc_name_hint="pointwise_nchwc",
            )
            return expr, ChannelOrder.identity(weight.shape[0], self.block)
        if schedule == compute.DEPTHWISE:
            # A ReLU of a blocked value that is read elsewhere too is applied as the conv
            # loads its window (the dropped ReLU kernel was 1.6% of Xception's time).
            relu_source = shared_relu_input(call.args[0], self.bindings, self.use_counts)
            relu_input = relu_source in self.blocked
            entry = self._blocked_input(relu_source if relu_input else call.args[0])
            packed = relax.const(pack_depthwise_weight(weight, self.block, entry.order))
            expr = self.builder_.call_te(
                compute.depthwise_nchwc,
                entry.var,
                packed,
                strides,
                pads,
                dilation,
                index,
                relu_input,
                primfunc_name_hint="depthwise_nchwc",
            )
            return expr, entry.order
        data, in_order = self._conv_input(call.args[0])
        if schedule == compute.DENSE:
            blocked = self.blocked.get(call.args[0]) is not None  # as _conv_input decided
            packed = relax.const(
                pack_dense_weight(weight, self.block, in_order, taps_outer=blocked)
            )
            expr = self.builder_.call_te(
                compute.dense_conv_nchwc,
                data,
                packed,
                strides,
                pads,
                dilation,
                index,
                primfunc_name_hint="conv_nchwc",
            )
            return expr, ChannelOrder.identity(weight.shape[0], self.block)
        source, prologue = self._prologue_input(call.args[0])
        if schedule == compute.GROUPED_PIXELS:
            self._grouped_pixels(var, source, prologue, weight, strides, pads, dilation, index)
            return None
        if prologue is not None:
            data, in_order = self._conv_input(source)
        groups = int(attrs.groups)
        layout = grouped_layout(
            weight.shape[0],
            groups,
            weight.shape[1],
            self.block,
            plain_order=use.plain_order,
            taps=weight.shape[2] * weight.shape[3],
        )
        table = channel_table(layout, in_order)
        affine = compute.affine_lanes(table)
        expr = self.builder_.call_te(
            compute.grouped_conv_nchwc if affine is None else compute.grouped_conv_nchwc_affine,
            data,
            relax.const(pack_grouped_weight(weight, self.block, groups, layout)),
            *([relax.const(table)] if affine is None else affine),
            strides,
            pads,
            dilation,
            layout.blocks_per_row,
            index,
            prologue=prologue,
            primfunc_name_hint="grouped_nchwc",
        )
        return expr, layout.out_order

    def _prologue_input(self, expr: Any) -> tuple[Any, Any]:
        """A conv's input that is BN (→ ReLU) of an NCHW value read by this conv only:
        ``(that value, (scale, shift, relu))``, which a grouped conv applies as it reads its
        input (:func:`compute.with_prologue`) and a pointwise conv's pack as it copies it, so
        the activation costs no kernel of its own; else
        ``(expr, None)``. A batch norm of a blocked value is blocked instead, and fused into
        its producer's epilogue (:meth:`_batch_norm`)."""
        found = pre_activation(expr, self.bindings, self.use_counts)
        if found is None:
            return expr, None
        source, norm, relu = found
        shape = static_shape(source)
        if source in self.blocked or shape is None or len(shape) != 4:
            return expr, None
        parameters = [reshaped_constant(arg, self.bindings) for arg in norm.args[1:5]]
        if any(p is None or p.shape != (shape[1],) for p in parameters):
            return expr, None
        scale, shift = batch_norm_affine(
            *parameters,  # type: ignore[arg-type]
            float(norm.attrs.epsilon),
            scale=bool(norm.attrs.scale),
            center=bool(norm.attrs.center),
        )
        return source, (relax.const(scale), relax.const(shift), relu)

    def _grouped_pixels(
        self,
        var: Any,
        source: Any,
        prologue: Any,
        weight: np.ndarray,
        strides: list[int],
        pads: list[int],
        dilation: list[int],
        index: int,
    ) -> None:
        """A grouped conv with few output channels per group, in NCHW, vectorized over pixels
        (:func:`compute.grouped_conv_pixels`): its output is NCHW, unless a PReLU read by
        blocked ops follows it (:meth:`_pixels_prelu`). A blocked input with no NCHW copy yet
        is unpacked through its lane order inside the conv's own kernel
        (:func:`compute.unpacked_window`), not by a kernel of its own; else its input is read
        in NCHW."""
        entry = self.blocked.get(source) if prologue is None else None
        if entry is not None and source not in self.materialized:
            data = entry.var
            blocked = {"lane_of_channel": relax.const(entry.order.lanes.astype("int32"))}
        else:
            data, blocked = self.visit_expr(source), {}
        activation = self._pixels_prelu(var)
        packed = {}
        if activation is not None:
            packed = {"blocked_output": self.block, "slope": relax.const(activation[1])}
        expr = self.builder_.call_te(
            compute.grouped_conv_pixels,
            data,
            relax.const(weight),
            strides,
            pads,
            dilation,
            index,
            prologue=prologue,
            primfunc_name_hint="grouped_pixels",
            **blocked,
            **packed,
        )
        if activation is not None:
            self.fused_prelus.add(activation[0])
            self.plain_results.add(var)  # read by the dropped PReLU only
            out = self.builder_.emit(expr, activation[0].name + "_nchwc")
            channels = int(weight.shape[0])
            self._register(activation[0], out, ChannelOrder.identity(channels, self.block))
            return
        if isinstance(var, relax.DataflowVar):
            self.set_var_remap(var, self.builder_.emit(expr, var.name))
        else:
            self.set_var_remap(var, self.builder_.emit_output(expr, var.name))
        self.plain_results.add(var)

    def _pixels_prelu(self, var: Any) -> tuple[Any, np.ndarray] | None:
        """``(the PReLU's var, its slope)`` where ``var`` (a pixel conv's NCHW result) is read
        only by a PReLU of constant per-channel slope whose readers all take blocked values
        (ESPNet v2's grouped convs of few channels per group): the conv then packs its result
        with the PReLU applied, row by row in its own kernel, where the PReLU and a pack
        kernel after it read the result back from memory once more; else None."""
        reader = self.readers.get(var)
        if self.use_counts.get(var) != 1 or reader is None:
            return None
        call = reader.value
        if not isinstance(call, relax.Call) or op_name(call) != _PRELU:
            return None
        if not self._channel_axis(call):
            return None
        slope = reshaped_constant(call.args[1], self.bindings)
        channels = nchw_shape(var)[1]
        if slope is None or slope.size != channels or str(slope.dtype) != "float32":
            return None
        readers = self.all_readers.get(reader.var, [])
        if not readers or any(r is None or op_name(r) not in _TAKES_BLOCKED for r in readers):
            return None
        return reader.var, slope.reshape(-1)

    def _transposed_conv(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
        """A transposed conv as our sub-pixel conv (:func:`compute.transposed_conv_nchwc`):
        input blocked if it already is, else read in NCHW like a dense conv's. One computing a
        result of ``main`` (ESPNet's full-size logits) writes NCHW from its register tiles
        (:func:`compute.transposed_conv_nchw`): a blocked result would be unpacked whole, one
        more pass over the model's largest tensor."""
        index = self.transposed_indices.get(var)
        schedule, reason = classify_transposed_conv(call)
        if index is not None:
            self.log.plans[index] = ConvPlan(index, schedule, reason)
        if schedule is None or index is None:
            return None
        weight = const_value(call.args[1])
        strides = [int(s) for s in call.attrs.strides]
        pads = [int(p) for p in call.attrs.padding]
        pads = pads * 2 if len(pads) == 2 else pads
        data, in_order = self._conv_input(call.args[0])
        packed = pack_transposed_weight(weight, self.block, in_order, (strides[0], strides[1]))
        out_size = list(nchw_shape(var)[2:])
        if not isinstance(var, relax.DataflowVar):
            expr = self.builder_.call_te(
                compute.transposed_conv_nchw,
                data,
                relax.const(packed),
                strides,
                pads,
                out_size,
                int(weight.shape[1]),
                index,
                primfunc_name_hint="conv2d_transpose_nchwc",
            )
            self.set_var_remap(var, self.builder_.emit_output(expr, var.name))
            self.plain_results.add(var)
            return None
        expr = self.builder_.call_te(
            compute.transposed_conv_nchwc,
            data,
            relax.const(packed),
            strides,
            pads,
            out_size,
            index,
            primfunc_name_hint="conv2d_transpose_nchwc",
        )
        return expr, ChannelOrder.identity(weight.shape[1], self.block)

    def _unary(self, call: Any) -> tuple[Any, ChannelOrder] | None:
        entry = self.blocked.get(call.args[0])
        if entry is None:
            return None
        rest = [self.visit_expr(arg) for arg in call.args[1:]]
        return relax.Call(call.op, [entry.var, *rest], call.attrs), entry.order

    def _channel_parameter(self, expr: Any, entry: _Blocked) -> Any | None:
        """A per-channel constant of ``entry``'s op, packed into its lanes as
        ``(1, C/x, 1, 1, x)``; None if ``expr`` is not such a constant."""
        value = reshaped_constant(expr, self.bindings)
        if value is None or value.size != entry.channels:
            return None
        packed = pack_channel_constant(
            value.reshape(-1, 1, 1), entry.channels, self.block, entry.order
        )
        return None if packed is None else relax.const(packed)

    @staticmethod
    def _channel_axis(call: Any) -> bool:
        return int(call.attrs.axis) % 4 == 1

    def _prelu(self, call: Any) -> tuple[Any, ChannelOrder] | None:
        """PReLU with a constant slope on a blocked value: :func:`compute.prelu_nchwc`."""
        entry = self.blocked.get(call.args[0])
        if entry is None or not self._channel_axis(call):
            return None
        slope = self._channel_parameter(call.args[1], entry)
        if slope is None:
            return None
        expr = self.builder_.call_te(
            compute.prelu_nchwc, entry.var, slope, primfunc_name_hint="prelu_nchwc"
        )
        return expr, entry.order

    def _resize(self, var: Any, call: Any) -> tuple[Any, ChannelOrder] | None:
        """A resize of a blocked value in NCHW[x]c (TVM's ``topi.image.resize2d`` takes the
        layout): each lane is resampled on its own, so the channel order holds and padding
        lanes stay zero -- except where ``tf_crop_and_resize`` extrapolates, kept in NCHW."""
        entry = self.blocked.get(call.args[0])
        attrs = call.attrs
        if entry is None or attrs.layout != "NCHW":
            return None
        if attrs.coordinate_transformation_mode == "tf_crop_and_resize":
            return None
        dtype = dtype_of(call.args[0])
        if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "void", dtype):
            return None
        expr = self.builder_.call_te(
            topi.image.resize2d,
            entry.var,
            roi=attrs.roi,
            size=list(static_shape(var)[2:]),
            layout=f"NCHW{self.block}c",
            method=attrs.method,
            coordinate_transformation_mode=attrs.coordinate_transformation_mode,
            rounding_method=attrs.rounding_method,
            bicubic_alpha=attrs.cubic_alpha,
            bicubic_exclude=attrs.cubic_exclude,
            extrapolation_value=attrs.extrapolation_value,
            primfunc_name_hint="resize2d_nchwc",
        )
        return expr, entry.order

    def _batch_norm(self, var: Any, call: Any) -> bool:
        """An inference batch norm the exporter could not fold into a conv (it follows a concat
        or a sum), on a blocked value: one per-channel multiply-add
        (:func:`compute.channel_affine_nchwc`), fused into the producer like any epilogue. The
        result tuple is not emitted: its fields are, as they are read
        (:meth:`_batch_norm_field`). On an NCHW value, :meth:`_plain_batch_norm`. False to
        keep the NCHW op."""
        entry = self.blocked.get(call.args[0])
        affine = self._batch_norm_affine(var, call)
        if affine is None:
            return False
        factor, shift = affine
        if entry is None:
            return self._plain_batch_norm(var, call, factor, shift)
        packed = [
            pack_channel_constant(p.reshape(-1, 1, 1), entry.channels, self.block, entry.order)
            for p in (factor, shift)
        ]
        expr = self.builder_.call_te(
            compute.channel_affine_nchwc,
            entry.var,
            *(relax.const(p) for p in packed),
            primfunc_name_hint="batch_norm_nchwc",
        )
        normalized = self.builder_.emit(expr, var.name + "_nchwc")
        self.batch_norms[var] = (_Blocked(normalized, entry.shape, entry.order), call)
        return True

    def _batch_norm_affine(self, var: Any, call: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """An inference batch norm over channels with constant parameters, whose tuple is read
        only through its fields, as ``(scale, shift)`` per channel; else None."""
        shape = static_shape(call.args[0])
        attrs = call.attrs
        if shape is None or len(shape) != 4 or attrs.training or not self._channel_axis(call):
            return None
        getters = [
            value
            for value in self.bindings.values()
            if isinstance(value, relax.TupleGetItem) and value.tuple_value.same_as(var)
        ]
        if len(getters) != self.use_counts.get(var, 0):  # the tuple itself is read
            return None
        parameters = [reshaped_constant(arg, self.bindings) for arg in call.args[1:5]]
        if any(p is None or p.shape != (shape[1],) for p in parameters):
            return None
        gamma, beta, mean, variance = parameters
        return batch_norm_affine(
            gamma,  # type: ignore[arg-type]
            beta,  # type: ignore[arg-type]
            mean,  # type: ignore[arg-type]
            variance,  # type: ignore[arg-type]
            float(attrs.epsilon),
            scale=bool(attrs.scale),
            center=bool(attrs.center),
        )

    def _plain_batch_norm(self, var: Any, call: Any, factor: np.ndarray, shift: np.ndarray) -> bool:
        """A batch norm of an NCHW value (CondenseNet's last one, after the concat its features
        stay in NCHW for) as ``x * scale + shift`` with constants folded here: TVM's lowering
        computed ``(x - mean) / sqrt(var + eps)`` per element, in the same kernel as the
        concat and the unpack of its blocked part (2.4% of condensenet74_c4_g4)."""
        data = self.visit_expr(call.args[0])
        per_channel = (1, -1, 1, 1)
        scaled = self.builder_.emit(
            relax.op.multiply(data, relax.const(factor.reshape(per_channel))), "scaled"
        )
        normalized = self.builder_.emit(
            relax.op.add(scaled, relax.const(shift.reshape(per_channel))), var.name + "_affine"
        )
        self.plain_norms[var] = (normalized, call)
        return True

    def _batch_norm_field(self, var: Any, item: Any) -> None:
        """A field of a batch norm's tuple we rewrote: the output (blocked, or NCHW for a
        :meth:`_plain_batch_norm`), or the moving mean or variance, which inference returns
        unchanged."""
        plain = self.plain_norms.get(item.tuple_value)
        if plain is not None:
            output, call = plain
            value = (
                output if int(item.index) == 0 else self.visit_expr(call.args[2 + int(item.index)])
            )
        else:
            entry, call = self.batch_norms[item.tuple_value]
            if int(item.index) == 0:
                self._register(var, entry.var, entry.order)
                return
            value = self.visit_expr(call.args[2 + int(item.index)])
        if isinstance(var, relax.DataflowVar) and isinstance(value, relax.Var):
            self.set_var_remap(var, value)
            return
        if isinstance(var, relax.DataflowVar):
            self.set_var_remap(var, self.builder_.emit(value, var.name))
        else:
            self.set_var_remap(var, self.builder_.emit_output(value, var.name))

    def _binary(self, call: Any, name: str) -> tuple[Any, ChannelOrder] | None:
        lhs, rhs = call.args
        out_shape = static_shape(call)
        blocked = [self.blocked[arg] for arg in (lhs, rhs) if arg in self.blocked]
        if not blocked:
            return None
        if out_shape is None or len(out_shape) != 4:
            return None
        if len(blocked) == 2 and not blocked[0].order.same(blocked[1].order):
            return self._reordered_binary(call, name, blocked, out_shape)
        order = blocked[0].order
        operands = []
        for position, arg in enumerate((lhs, rhs)):
            divisor = name == _DIVIDE and position == 1
            operand = self._binary_operand(arg, out_shape, order, divisor=divisor)
            if operand is None:
                return None
            operands.append(operand)
        # Packs are emitted only once both operands are known to be blockable.
        resolved = [
            self._packed_as(op.arg, order) if isinstance(op, _Pack) else op for op in operands
        ]
        return relax.Call(call.op, resolved, call.attrs), order

    def _reordered_binary(
        self, call: Any, name: str, entries: list[_Blocked], out_shape: tuple[int, ...]
    ) -> tuple[Any, ChannelOrder] | None:
        """Two blocked operands in different lane orders (ShuffleNet v1's residual add after a
        grouped conv that padded its groups, as
        :func:`~edgecompile.schedules.channels.grouped_layout` may): the one in the plain order
        is moved into the other's lanes, one pass of vector permutes, where NCHW cost an unpack
        of both and a pack after. The sum keeps that order, so the next unit's add meets the
        same order and moves nothing."""
        if name == _DIVIDE or any(entry.shape != tuple(out_shape) for entry in entries):
            return None  # a zero padding lane would divide by zero
        keep = 1 if entries[0].order.is_identity(self.block) else 0
        order = entries[keep].order
        moved = self._reordered(entries[1 - keep], order)
        operands = [entries[0].var, moved] if keep == 0 else [moved, entries[1].var]
        return relax.Call(call.op, operands, call.attrs), order

    def _reordered(self, entry: _Blocked, order: ChannelOrder) -> Any:
        """``entry``'s channels in ``order``'s lanes (zero in its padding lanes):
        :func:`compute.concat_permute` of one part."""
        by_lane: list[tuple[int, int] | None] = [None] * order.total
        for channel, lane in enumerate(order.lanes):
            by_lane[int(lane)] = (0, int(entry.order.lanes[channel]))
        dtype = dtype_of(entry.var)
        func = compute.concat_permute([static_shape(entry.var)], by_lane, dtype)
        # Under a root block: RewriteDataflowReshape asks every one-input call_tir whether it is
        # a reshape, and that question needs one.
        root = s_tir.SBlock([], [], [], "root", func.body)
        func = func.with_body(s_tir.SBlockRealize([], True, root))
        callee = self.builder_.add_func(func, "reorder_nchwc")
        shape = (entry.shape[0], order.total // self.block, *entry.shape[2:], self.block)
        call = relax.call_tir(callee, relax.Tuple([entry.var]), relax.TensorType(shape, dtype))
        return self.builder_.emit(call, "reordered")

    def _binary_operand(
        self, arg: Any, out_shape: tuple[int, ...], order: ChannelOrder, divisor: bool
    ) -> Any:
        """The blocked form of one operand: an Expr, a :class:`_Pack` to emit, or None."""
        channels = out_shape[1]
        entry = self.blocked.get(arg)
        if entry is not None:
            # A blocked operand must carry the output's channels in its lanes, in the same
            # order: broadcasting a one-channel tensor would broadcast lanes, not channels.
            if (
                entry.channels == channels
                and broadcasts(entry.shape, out_shape)
                and entry.order.same(order)
            ):
                return entry.var
            return None
        shape = static_shape(arg)
        if shape is None:
            return None
        if all(d == 1 for d in shape):  # a scalar broadcast
            if divisor and not (is_const(arg) and np.all(const_value(arg) != 0)):
                return None
            return self.visit_expr(arg)
        if divisor:  # padded lanes would divide by zero and poison the next conv
            return None
        if is_const(arg):
            packed = pack_channel_constant(const_value(arg), channels, self.block, order)
            return None if packed is None else relax.const(packed)
        if len(shape) == 4 and shape[1] == channels and broadcasts(shape, out_shape):
            return _Pack(arg)
        return None

    def _call_tir(self, call: Any) -> tuple[Any, ChannelOrder] | None:
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
                bound = relax.const(folded, dtype_of(args[1]))
        else:
            bound = relax.const(constant, dtype_of(args[0]))
        return relax.Call(tvm.ir.Op.get(op), [entry.var, bound]), entry.order


def blocked_layout(cpu: CpuInfo, log: LayoutLog) -> Any:
    """The layout pass over ``main``: :class:`BlockedLayoutMutator` as a module pass."""

    @tvm.transform.module_pass(opt_level=0, name="edgecompile.BlockedLayout")
    def transform(module: Any, _context: Any) -> Any:
        indices = conv_indices(module)
        if not indices and not transposed_conv_indices(module):
            return module
        mutator = BlockedLayoutMutator(module, cpu, indices, log)
        main = module.get_global_var("main")
        mutator.builder_.update_func(main, mutator.visit_expr(module[main]))
        return mutator.builder_.get()

    return transform
