"""Stage 2 → 3: a static-shape ONNX file → a TVM Relax module (weights bound as constants).

ONNX files edgecompile did not export (bring-your-own) may carry a symbolic batch dimension and
the ``Shape`` → ``Gather`` arithmetic that older exporters emit for ``x.chunk()`` or ``flatten``;
TVM imports those as dynamic shapes that do not build. So every file is first pinned to one
input shape and constant-folded, and its ops are checked against what TVM's frontend supports.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edgecompile.errors import EdgecompileError, first_line, last_line
from edgecompile.export import TensorSpec, check_static_onnx, tensor_specs


@dataclass(frozen=True)
class RelaxModel:
    """An imported module and the signature of its ``main``."""

    name: str
    module: Any  # tvm.IRModule
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise EdgecompileError(f"ONNX file {str(path)!r} does not exist", "check the path")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise EdgecompileError(
            f"{str(path)!r} is not an ONNX model: {first_line(exc)}",
            "pass a .onnx file written by torch.onnx.export or `edgecompile export`",
        ) from None


def make_static(
    proto: onnx.ModelProto,
    *,
    source: str,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> onnx.ModelProto:
    """Pin every input to a fixed shape, then fold the shape arithmetic that this makes constant.

    ``input_shapes`` overrides the file's dims per input; a symbolic dim left unpinned is an error.
    """
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    initializers = {init.name for init in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        wanted = (input_shapes or {}).get(value.name)
        if wanted is not None:
            if len(wanted) != len(dims):
                raise EdgecompileError(
                    f"{source}: input {value.name!r} has rank {len(dims)}, not {len(wanted)}",
                    "give --input-size HEIGHTxWIDTH for an NCHW image input",
                )
            for dim, size in zip(dims, wanted, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
        for index, dim in enumerate(dims):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                label = dim.dim_param or "?"
                if index == 0:
                    dim.Clear()
                    dim.dim_value = 1  # the batch: --batch overrides through input_shapes
                    continue
                raise EdgecompileError(
                    f"{source}: input {value.name!r} has a dynamic dimension {label!r}",
                    "fix it with --input-size (and --batch), or export with static shapes",
                )
    # Symbolic output dims would survive folding; drop them so inference recomputes them.
    for value in proto.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    del proto.graph.value_info[:]
    try:
        import onnxscript.optimizer

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            proto = onnxscript.optimizer.optimize(proto)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception as exc:  # the optimizer and inference raise assorted types
        raise EdgecompileError(
            f"{source}: cannot fold the model's shapes: {first_line(exc)}",
            "export the model with static shapes (torch.onnx.export(..., dynamo=True))",
        ) from None
    return proto


def supported_onnx_ops() -> frozenset[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map())


def check_supported_ops(proto: onnx.ModelProto, *, source: str) -> None:
    supported = supported_onnx_ops()
    standard = ("", "ai.onnx")
    used = {node.op_type for node in proto.graph.node if node.domain in standard}
    missing = sorted(used - supported)
    # Any other domain (ai.onnx.ml, com.microsoft, a custom one) is not the op TVM's frontend
    # would convert: it maps an op by its name alone.
    custom = sorted(
        {f"{n.domain}.{n.op_type}" for n in proto.graph.node if n.domain not in standard}
    )
    if missing or custom:
        ops = ", ".join(missing + custom)
        raise EdgecompileError(
            f"{source}: TVM's ONNX frontend cannot import op(s) {ops}",
            "rewrite that part of the model with supported ops, or file it with the model name",
        )


def import_onnx(
    path: str | Path,
    *,
    name: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[RelaxModel, onnx.ModelProto]:
    """Read, pin, fold and check an ONNX file, then import it into Relax.

    Returns the Relax model and the static ONNX model it came from (the build verifies the
    compiled library against ONNX Runtime running exactly that file).
    """
    source = str(path)
    proto = make_static(load_onnx(path), source=source, input_shapes=input_shapes)
    # Ops first: an op shape inference does not know also leaves its outputs without a shape,
    # and "the op is unsupported" is the message that names the fix.
    check_supported_ops(proto, source=source)
    check_static_onnx(proto, source=source)
    from tvm.relax.frontend.onnx import from_onnx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = from_onnx(proto, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises TVMError, ValueError, KeyError, ...
        raise EdgecompileError(
            f"{source}: TVM could not import the model: {last_line(exc)}",
            "simplify the failing op in the model or report it with the ONNX file",
        ) from None
    module = bounded_takes(module)
    inputs = tensor_specs(proto.graph.input, proto)
    outputs = tensor_specs(proto.graph.output, proto)
    relax_model = RelaxModel(name or Path(path).stem, module, inputs, outputs)
    return relax_model, proto


def bounded_takes(module: Any) -> Any:
    """Rewrite the frontend's ``take(..., mode="fast")`` (ONNX Gather) as ``mode="clip"``.

    Why: TVM logs "Fast mode segfaults when there are out-of-bounds indices" for every such take
    it legalizes -- hundreds of lines over a zoo report (CondenseNet's kept channels, ESPNet
    v2's resampling) -- and an out-of-range index, invalid ONNX but possible in a user's file,
    would read out of bounds. The frontend already turns ONNX's negative indices into positive
    ones, so for every valid index ``clip`` gives the same result, for a min/max per index.
    """
    from tvm import relax

    @relax.expr_functor.mutator
    class BoundedTakes(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if getattr(call.op, "name", "") != "relax.take" or call.attrs.mode != "fast":
                return call
            data, indices = call.args
            return relax.op.take(data, indices, call.attrs.axis, mode="clip")

    mutator = BoundedTakes(module)
    for gvar, func in module.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


#: Relax op → the heavy-op kind ``heavy_ops`` reports (and the schedules index ops by).
HEAVY_OPS = {
    "relax.nn.conv2d": "conv2d",
    "relax.nn.conv2d_transpose": "conv2d_transpose",
    "relax.matmul": "matmul",
    "relax.linear": "matmul",
    "relax.nn.max_pool2d": "pool",
    "relax.nn.avg_pool2d": "pool",
    "relax.nn.adaptive_avg_pool2d": "pool",
}


def heavy_ops(module: Any) -> list[dict[str, Any]]:
    """The convolutions, matmuls and pools of ``main``, in order, with the shapes that matter
    (``shapes``: the first two arguments'; ``output``: the result's).

    Each entry's ``kind`` names the schedule class: pointwise, depthwise, grouped, conv (dense
    k×k), conv2d_transpose, matmul or pool.
    """
    from tvm import relax

    ops: list[dict[str, Any]] = []
    for block in module["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not hasattr(call.op, "name"):
                continue
            op = HEAVY_OPS.get(call.op.name)
            if op is None:
                continue
            shapes = [[int(d) for d in arg.ty.shape] for arg in call.args[:2] if _has_shape(arg)]
            entry: dict[str, Any] = {"index": len(ops), "op": op, "shapes": shapes}
            if _has_shape(binding.var):  # what a layer's arithmetic is counted from
                entry["output"] = [int(d) for d in binding.var.ty.shape]
            if op == "conv2d":
                data, weight = shapes[0], shapes[1]
                groups = int(call.attrs.groups)
                kernel = weight[2:]
                if groups == 1:
                    kind = "pointwise" if kernel == [1, 1] else "conv"
                elif groups == data[1] and weight[1] == 1:
                    kind = "depthwise"
                else:
                    kind = "grouped"
                entry.update(
                    kind=kind,
                    groups=groups,
                    kernel=kernel,
                    strides=[int(s) for s in call.attrs.strides],
                    dilation=[int(d) for d in call.attrs.dilation],
                )
            else:
                entry["kind"] = op
                entry.update(_window(call, shapes))
            ops.append(entry)
    return ops


def _window(call: Any, shapes: list[list[int]]) -> dict[str, Any]:
    """Window, stride and groups of a pool or transposed conv, as ``build --explain`` shows
    them beside a conv's (a pool's type too: max and average pools schedule differently)."""
    attrs = call.attrs
    name = call.op.name
    window: dict[str, Any] = {}
    if name == "relax.nn.conv2d_transpose":
        window["groups"] = int(attrs.groups)
        if len(shapes) > 1:
            window["kernel"] = shapes[1][2:]
    elif name == "relax.nn.adaptive_avg_pool2d":
        window["pool"] = "adaptive_avg"
        if attrs.output_size is not None:
            window["output_size"] = [int(d) for d in attrs.output_size]
        return window
    elif name in ("relax.nn.max_pool2d", "relax.nn.avg_pool2d"):
        window["pool"] = "max" if name == "relax.nn.max_pool2d" else "avg"
        window["kernel"] = [int(d) for d in attrs.pool_size]
    else:
        return window
    window["strides"] = [int(s) for s in attrs.strides]
    return window


def _has_shape(expr: Any) -> bool:
    ty = getattr(expr, "ty", None)
    return ty is not None and getattr(ty, "shape", None) is not None
