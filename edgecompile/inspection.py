"""Per-layer cost of a torch model: multiply-adds, parameters and memory access cost (MAC).

Every aten op a forward pass runs is recorded (a ``TorchDispatchMode``) and attributed to the
innermost named module that ran it, so functional work the module tree hides — residual adds,
concatenations, the copy behind a channel shuffle — is counted too. MAC follows ShuffleNet v2
(Ma et al. 2018, section 2): a convolution reads its input and weights and writes its output
(1×1: h·w·(c1+c2) + c1·c2; k×k grouped: Hin·Win·Cin + Hout·Wout·Cout + k²·Cin·Cout/g); an
element-wise op reads its inputs and writes its output. Views cost nothing.

Each op is shown by a readable name (``Conv 3×3 dw``, ``BatchNorm``, ``Reshape``) beside the aten
name it ran as. ``python -m edgecompile.inspection`` recounts every zoo model and rewrites the
shipped ``edgecompile/zoo/facts.json`` (what ``edgecompile models`` prints without building).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from edgecompile.export import TorchModel
from edgecompile.zoo import ModelSummary, catalog_summary, get_model, model_info
from edgecompile.zoo.catalog import FACTS_PATH, CatalogEntry, write_facts
from edgecompile.zoo.registry import builtin_model_infos

# Op classes, in the vocabulary the reports use.
POINTWISE = "pointwise"
DEPTHWISE = "depthwise"
GROUPED = "grouped"
CONV = "conv"
LINEAR = "linear"
POOL = "pool"
ELEMENTWISE = "elementwise"
DATA_MOVEMENT = "data_movement"
NORM = "norm"

_ELEMENTWISE_OPS = {
    "add", "sub", "mul", "div", "relu", "relu_", "hardtanh", "hardtanh_", "hardswish",
    "hardswish_", "hardsigmoid", "hardsigmoid_", "sigmoid", "tanh", "prelu",
    "_prelu_kernel", "clamp", "clamp_min", "silu", "gelu", "leaky_relu", "where",
}  # fmt: skip
_POOL_OPS = {
    "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "mean", "adaptive_avg_pool2d",
    "_adaptive_avg_pool2d", "adaptive_max_pool2d",
}  # fmt: skip
_DATA_MOVEMENT_OPS = {
    "cat", "clone", "_unsafe_view", "index_select", "index", "gather", "constant_pad_nd",
    "upsample_bilinear2d", "upsample_nearest2d", "copy", "copy_", "contiguous", "_to_copy",
}  # fmt: skip
_MATMUL_OPS = {"addmm", "mm", "bmm", "matmul", "linear"}
_NORM_OPS = {"native_batch_norm", "_native_batch_norm_legit_no_training", "batch_norm"}

# Readable names of the aten ops, in the vocabulary of the papers (convolutions are named from
# their shape instead, see _conv_label).
_LABELS = {
    "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "relu": "ReLU", "relu_": "ReLU",
    "hardtanh": "HardTanh", "hardtanh_": "HardTanh", "hardswish": "HardSwish",
    "hardswish_": "HardSwish", "hardsigmoid": "HardSigmoid", "hardsigmoid_": "HardSigmoid",
    "sigmoid": "Sigmoid", "tanh": "Tanh", "prelu": "PReLU", "_prelu_kernel": "PReLU",
    "clamp": "Clamp", "clamp_min": "Clamp", "silu": "SiLU", "gelu": "GELU",
    "leaky_relu": "LeakyReLU", "where": "Where",
    "max_pool2d": "MaxPool", "max_pool2d_with_indices": "MaxPool", "avg_pool2d": "AvgPool",
    "mean": "Mean", "adaptive_avg_pool2d": "AdaptiveAvgPool",
    "_adaptive_avg_pool2d": "AdaptiveAvgPool", "adaptive_max_pool2d": "AdaptiveMaxPool",
    "cat": "Concat", "clone": "Copy", "_unsafe_view": "Reshape", "index_select": "Gather",
    "index": "Gather", "gather": "Gather", "constant_pad_nd": "Pad",
    "upsample_bilinear2d": "Upsample bilinear", "upsample_nearest2d": "Upsample nearest",
    "copy": "Copy", "copy_": "Copy", "contiguous": "Copy", "_to_copy": "Copy",
    "addmm": "Linear", "linear": "Linear", "mm": "MatMul", "bmm": "MatMul", "matmul": "MatMul",
    "native_batch_norm": "BatchNorm", "_native_batch_norm_legit_no_training": "BatchNorm",
    "batch_norm": "BatchNorm",
}  # fmt: skip


@dataclass(frozen=True)
class LayerCost:
    """One op of the forward pass."""

    index: int
    layer: str
    op: str  # the aten op, as torch ran it
    op_class: str
    output_shape: tuple[int, ...]
    params: int
    multiply_adds: int
    memory_access: int  # elements read and written (MAC in ShuffleNet v2's sense)
    groups: int = 1
    label: str = ""  # the op by a readable name: "Conv 3×3 dw s2", "BatchNorm", "Reshape"


@dataclass(frozen=True)
class Finding:
    guideline: str
    summary: str


@dataclass(frozen=True)
class ModelCost:
    name: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerCost, ...]
    findings: tuple[Finding, ...]

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def multiply_adds(self) -> int:
        return sum(layer.multiply_adds for layer in self.layers)

    @property
    def memory_access(self) -> int:
        return sum(layer.memory_access for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "input_shape": list(self.input_shape),
            "params": self.params,
            "multiply_adds": self.multiply_adds,
            "memory_access": self.memory_access,
            "layers": [asdict(layer) for layer in self.layers],
            "findings": [asdict(finding) for finding in self.findings],
        }


def _numel(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (list, tuple)):
        return sum(_numel(v) for v in value)
    return 0


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class _Recorder(TorchDispatchMode):
    def __init__(self, module_stack: list[str], param_ids: dict[int, int]) -> None:
        super().__init__()
        self.module_stack = module_stack
        self.param_ids = param_ids
        self.seen_params: set[int] = set()
        self.rows: list[LayerCost] = []
        # nn.Linear hands addmm a transposed view of its weight: views of a parameter count as
        # the parameter. The views are kept alive so their ids are not reused mid-pass.
        self.param_views: dict[int, int] = {}
        self._alive: list[torch.Tensor] = []

    def _param_key(self, arg: Any) -> int | None:
        if not isinstance(arg, torch.Tensor):
            return None
        key = self.param_views.get(id(arg), id(arg))
        return key if key in self.param_ids else None

    def _params(self, args: Sequence[Any]) -> int:
        total = 0
        for arg in args:
            key = self._param_key(arg)
            if key is not None and key not in self.seen_params:
                self.seen_params.add(key)
                total += self.param_ids[key]
        return total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view and args and isinstance(out, torch.Tensor):
            key = self._param_key(args[0])
            if key is not None:
                self.param_views[id(out)] = key
                self._alive.append(out)
        row = self._classify(name, args, out)
        if row is not None:
            self.rows.append(row)
        return out

    def _classify(self, name: str, args: Sequence[Any], out: Any) -> LayerCost | None:
        output = _first_tensor(out)
        if output is None:
            return None
        layer = self.module_stack[-1] if self.module_stack else "(model)"
        shape = tuple(output.shape)
        in_elems = sum(_numel(a) for a in args if isinstance(a, (torch.Tensor, list, tuple)))
        op_class: str
        multiply_adds = 0
        groups = 1
        label = _LABELS.get(name, name)
        if name == "convolution":
            x, weight = args[0], args[1]
            transposed, groups = bool(args[6]), int(args[8])
            kernel = math.prod(weight.shape[2:])
            if transposed:
                multiply_adds = x.numel() * weight.shape[1] * kernel
            else:
                multiply_adds = output.numel() * weight.shape[1] * kernel
            in_channels = x.shape[1]
            if groups == 1:
                op_class = POINTWISE if kernel == 1 else CONV
            elif groups == in_channels and weight.shape[1] == 1:
                op_class = DEPTHWISE
            else:
                op_class = GROUPED
            memory = in_elems + output.numel()
            label = _conv_label(tuple(weight.shape[2:]), args, op_class, groups)
        elif name in _MATMUL_OPS:
            a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
            multiply_adds = a.numel() * b.shape[-1]
            op_class = LINEAR
            memory = in_elems + output.numel()
        elif name in _NORM_OPS:
            # Eval-mode BN folds into the preceding conv at export: its params count, its traffic
            # does not.
            op_class, memory = NORM, 0
        elif name in _ELEMENTWISE_OPS:
            op_class, memory = ELEMENTWISE, in_elems + output.numel()
            if label == "HardTanh" and tuple(args[1:3]) == (0.0, 6.0):
                label = "ReLU6"  # nn.ReLU6 runs as hardtanh(x, 0, 6)
        elif name in _POOL_OPS:
            op_class, memory = POOL, _numel(args[0]) + output.numel()
            label = _pool_label(label, args, output)
        elif name in _DATA_MOVEMENT_OPS:
            op_class, memory = DATA_MOVEMENT, _numel(args[0]) + output.numel()
        else:
            return None  # views, reshapes and allocations move no data
        return LayerCost(
            index=len(self.rows),
            layer=layer,
            op=name,
            op_class=op_class,
            output_shape=shape,
            params=self._params(args),
            multiply_adds=int(multiply_adds),
            memory_access=int(memory),
            groups=groups,
            label=label,
        )


def _conv_label(kernel: tuple[int, ...], args: Sequence[Any], op_class: str, groups: int) -> str:
    """The label of a convolution: "Conv 1×1", "Conv 3×3 dw s2", "ConvTranspose 2×2 s2", ..."""
    # aten.convolution(input, weight, bias, stride, padding, dilation, transposed, ...)
    stride, dilation, transposed = args[3], args[5], bool(args[6])
    words = ["ConvTranspose" if transposed else "Conv", "×".join(map(str, kernel))]
    if op_class == DEPTHWISE:
        words.append("dw")
    elif op_class == GROUPED:
        words.append(f"g{groups}")
    if max(stride) > 1:
        words.append(f"s{max(stride)}")
    if max(dilation) > 1:
        words.append(f"d{max(dilation)}")
    return " ".join(words)


def _pool_label(label: str, args: Sequence[Any], output: torch.Tensor) -> str:
    """A pooling to one pixel is "GlobalAvgPool"/"GlobalMaxPool"; a window shows its size."""
    if (output.dim() == 4 and output.shape[2:] == (1, 1)) or label == "Mean":
        return "GlobalMaxPool" if "Max" in label else "GlobalAvgPool"
    if label in ("MaxPool", "AvgPool") and len(args) > 1:
        return f"{label} {'×'.join(map(str, args[1]))}"
    return label


def _record_ops(module: nn.Module, data: torch.Tensor) -> list[LayerCost]:
    stack: list[str] = []

    def enter(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any) -> None:
            stack.append(name)

        return hook

    def leave(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        stack.pop()  # a hook that returned a value would replace the module's output

    handles = []
    for name, sub in module.named_modules():
        if name:
            handles.append(sub.register_forward_pre_hook(enter(name)))
            handles.append(sub.register_forward_hook(leave))
    param_ids = {id(p): p.numel() for p in module.parameters()}
    recorder = _Recorder(stack, param_ids)
    try:
        with torch.no_grad(), recorder:
            module(data)
    finally:
        for handle in handles:
            handle.remove()
    # Parameters no op touched (unused heads, say) are still the model's: keep totals honest.
    unused = sum(n for key, n in param_ids.items() if key not in recorder.seen_params)
    rows = list(recorder.rows)
    if unused:
        rows.append(
            LayerCost(
                len(rows), "(unused)", "parameters", NORM, (), unused, 0, 0, label="unused params"
            )
        )
    return rows


def inspect_model(model: TorchModel) -> ModelCost:
    """Run one batch through ``model`` and cost every op; see the module docstring for the rules."""
    layers = tuple(_record_ops(model.module, torch.zeros(model.input_shape)))
    return ModelCost(model.name, model.input_shape, layers, tuple(guideline_findings(layers)))


def summarize_model(name: str) -> ModelSummary:
    """Params and multiply-adds of a zoo model (or alias) at its default input size.

    A built-in model's come from the facts shipped with the package (nothing is built); a model
    registered at run time is counted by :func:`measure_model`.
    """
    return catalog_summary(name) or measure_model(name)


def measure_model(name: str) -> ModelSummary:
    """Count a model's params and multiply-adds by running it once.

    Costs depend on shapes only, so the model is built on the ``meta`` device (no memory, no
    arithmetic); a builder that needs real weights (CondenseNet's condensation ranks them) is
    built for real instead.
    """
    info = model_info(name)
    try:
        with torch.device("meta"):
            module = info.builder(**info.kwargs).eval()
            rows = _record_ops(module, torch.zeros(info.input_shape))
    except (NotImplementedError, RuntimeError):
        module = get_model(info.name)
        rows = _record_ops(module, torch.zeros(info.input_shape))
    return ModelSummary(
        name=info.name,
        family=info.family,
        task=info.task,
        input_size=info.input_size,
        params=sum(row.params for row in rows),
        multiply_adds=sum(row.multiply_adds for row in rows),
        description=info.description,
        aliases=info.aliases,
    )


def measure_zoo() -> list[CatalogEntry]:
    """Every built-in model counted afresh, as ``facts.json`` should record it."""
    return [
        CatalogEntry(measure_model(info.name), info.builder.__module__.rpartition(".")[2])
        for info in builtin_model_infos()
    ]


def regenerate_zoo_facts(path: Path = FACTS_PATH) -> int:
    """Rewrite the shipped zoo facts from the registry; returns how many models it holds."""
    entries = measure_zoo()
    write_facts(entries, path)
    return len(entries)


def _share(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "0%"


def guideline_findings(layers: Sequence[LayerCost]) -> list[Finding]:
    """The four practical guidelines of ShuffleNet v2, measured on these layers."""
    total_mac = sum(layer.memory_access for layer in layers) or 1
    findings: list[Finding] = []

    pointwise = [layer for layer in layers if layer.op_class == POINTWISE]
    if pointwise:
        # For fixed FLOPs B = h·w·c1·c2, MAC ≥ 2·sqrt(h·w·B) + B/(h·w), reached at c1 = c2.
        bound = 0.0
        for layer in pointwise:
            hw = math.prod(layer.output_shape[2:]) if len(layer.output_shape) == 4 else 1
            flops = layer.multiply_adds / max(layer.output_shape[0], 1)
            bound += 2 * math.sqrt(hw * flops) + flops / hw
        actual = sum(layer.memory_access / max(layer.output_shape[0], 1) for layer in pointwise)
        findings.append(
            Finding(
                "G1 equal channel width",
                f"{len(pointwise)} pointwise convs use {actual / bound:.2f}× the memory access "
                "of equal-width layers with the same multiply-adds (1.00× is ideal)",
            )
        )
    else:
        findings.append(Finding("G1 equal channel width", "no ungrouped 1×1 convolutions"))
    grouped = [layer for layer in layers if layer.op_class == GROUPED]
    if grouped:
        groups = sorted({layer.groups for layer in grouped})
        mac = sum(layer.memory_access for layer in grouped)
        findings.append(
            Finding(
                "G2 group convolution",
                f"{len(grouped)} grouped convs (groups {', '.join(map(str, groups))}) carry "
                f"{_share(mac, total_mac)} of all memory access",
            )
        )
    else:
        findings.append(Finding("G2 group convolution", "no grouped convolutions"))
    compute = [layer for layer in layers if layer.multiply_adds]
    ops = [layer for layer in layers if layer.op_class != NORM]
    if compute:
        mean_madds = sum(layer.multiply_adds for layer in compute) / len(compute)
        findings.append(
            Finding(
                "G3 fragmentation",
                f"{len(ops)} operators, {len(compute)} of them convs/linears averaging "
                f"{mean_madds / 1e6:.2f}M multiply-adds each",
            )
        )
    cheap = [layer for layer in layers if layer.op_class in (ELEMENTWISE, DATA_MOVEMENT)]
    findings.append(
        Finding(
            "G4 element-wise operations",
            f"element-wise ops and data movement: {len(cheap)} of {len(ops)} operators, "
            f"{_share(sum(layer.memory_access for layer in cheap), total_mac)} of memory access, "
            "no multiply-adds counted",
        )
    )
    return findings


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    print(f"wrote {regenerate_zoo_facts()} models to {FACTS_PATH}")
