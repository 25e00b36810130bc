"""The zoo-side commands: ``models``, ``inspect`` and ``export``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from edgecompile.cli.options import (
    batch_option,
    check_writable_file,
    input_size_option,
    json_option,
    print_json,
    seed_option,
    weights_option,
)
from edgecompile.errors import EdgecompileError

if TYPE_CHECKING:
    from edgecompile.zoo import ModelSummary


@click.command("models")
@click.argument("pattern", required=False)
@json_option
def models_command(pattern: str | None, as_json: bool) -> None:
    """List the zoo: name, family, task, input size, params, multiply-adds and other names.

    PATTERN filters names and aliases: a substring (`mobilenet`) or a glob (`shufflenet_v1_g8*`).
    Every command takes a model by its name or an alias: torchvision's and timm's names for the
    same network (`mnasnet1_0`, `mobilenetv2_050`) and the grid's full spelling of a default
    (`shufflenet_v1_g3_x1_0`). The costs are counted once and shipped, so this is instant.

    \b
    Examples:
      edgecompile models
      edgecompile models 'shufflenet_v1_g8*'
      edgecompile models mobilenetv3 --json
    """
    from edgecompile._table import format_table, human_count
    from edgecompile.zoo import catalog_summary, list_models

    names = list_models(pattern)
    if not names:
        raise EdgecompileError(f"no model matches {pattern!r}", "run `edgecompile models` for all")
    summaries = [catalog_summary(name) or _measure(name) for name in names]
    if as_json:
        print_json([summary.to_dict() for summary in summaries])
        return
    rows = [
        (
            s.name,
            s.family,
            s.task,
            f"{s.input_size[0]}x{s.input_size[1]}",
            f"{s.params:,}",
            human_count(s.multiply_adds),
            ", ".join(s.aliases) or "-",
        )
        for s in summaries
    ]
    headers = ("model", "family", "task", "input", "params", "multiply-adds", "also known as")
    click.echo(format_table(headers, rows))


def _measure(name: str) -> ModelSummary:
    # Only a model registered at run time has no shipped facts; counting it needs torch.
    from edgecompile.inspection import measure_model

    return measure_model(name)


@click.command("inspect")
@click.argument("model")
@input_size_option
@json_option
def inspect_command(model: str, input_size: str | None, as_json: bool) -> None:
    """Per-layer cost of MODEL: op, output shape, params, multiply-adds and memory access.

    The summary comes first: totals, then MODEL measured against ShuffleNet v2's four guidelines
    (G1 equal channel widths, G2 group-conv cost, G3 fragmentation, G4 element-wise work).
    Then one row per op. "mem access" is ShuffleNet v2's memory access cost (MAC): the
    elements an op reads and writes; it is not multiply-accumulates, which "mult-adds" counts.
    The JSON gives both per layer ("memory_access", "multiply_adds") with the aten op ("op")
    beside its readable name ("label").

    \b
    Examples:
      edgecompile inspect mobilenet_v2
      edgecompile inspect shufflenet_v1_g8_x0_25 --input-size 160 --json
    """
    from edgecompile._table import format_table, human_count
    from edgecompile.export import load_torch_model
    from edgecompile.inspection import inspect_model

    cost = inspect_model(load_torch_model(model, input_size=input_size))
    if as_json:
        print_json(cost.to_dict())
        return
    click.echo(
        f"{cost.name} at {'x'.join(map(str, cost.input_shape))}: {cost.params:,} params, "
        f"{human_count(cost.multiply_adds)} multiply-adds, "
        f"{human_count(cost.memory_access)} memory access (elements read + written)"
    )
    for finding in cost.findings:
        click.echo(f"  {finding.guideline}: {finding.summary}")
    click.echo()
    rows = [
        (
            layer.layer,
            layer.label or layer.op,
            layer.op_class,
            "x".join(map(str, layer.output_shape)),
            f"{layer.params:,}" if layer.params else "-",
            human_count(layer.multiply_adds) if layer.multiply_adds else "-",
            human_count(layer.memory_access) if layer.memory_access else "-",
        )
        for layer in cost.layers
    ]
    headers = ("layer", "op", "class", "output", "params", "mult-adds", "mem access")
    click.echo(format_table(headers, rows))


@click.command("export")
@click.argument("model")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="ONNX file to write [MODEL.onnx]."
)
@input_size_option
@batch_option
@weights_option
@seed_option
@json_option
def export_command(
    model: str,
    output: str | None,
    input_size: str | None,
    batch: int,
    weights: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Export MODEL to ONNX with static shapes and check ONNX Runtime against torch.

    MODEL is a zoo name (see `edgecompile models`) or pkg.module:function returning an nn.Module.
    The file passes onnx.checker, holds no run-time shape arithmetic (so TVM imports it with
    static shapes), and the command fails if ONNX Runtime's output differs from torch's by more
    than 1e-4 (max relative error). --seed also seeds the input of that check.

    \b
    Examples:
      edgecompile export shufflenet_v2 -o shufflenet_v2.onnx
      edgecompile export mobilenet_v2 --input-size 160 --batch 4 --json
      edgecompile export mypkg.models:tiny_net --weights tiny.pt
    """
    path = output or f"{model.replace(':', '_').replace('.', '_')}.onnx"
    check_writable_file(path, "-o")  # before torch loads and the model exports, not after
    from edgecompile.export import export_onnx, load_torch_model

    torch_model = load_torch_model(
        model, input_size=input_size, batch=batch, seed=seed, weights=weights
    )
    exported = export_onnx(torch_model, path, seed=seed)
    if as_json:
        print_json(
            {
                "model": exported.name,
                "path": str(exported.path),
                "weights": torch_model.origin,
                "inputs": [vars(spec) for spec in exported.inputs],
                "outputs": [vars(spec) for spec in exported.outputs],
                "max_relative_error": exported.max_relative_error,
            }
        )
        return
    shapes = ", ".join(f"{s.name} {'x'.join(map(str, s.shape))}" for s in exported.inputs)
    click.echo(f"wrote {exported.path} ({shapes}; {torch_model.origin})")
    click.echo(f"ONNX Runtime vs torch: max relative error {exported.max_relative_error:.2e}")
