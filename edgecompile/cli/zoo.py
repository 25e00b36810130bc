"""The zoo-side commands: ``models``, ``inspect`` and ``export``."""

from __future__ import annotations

import click

from edgecompile.cli.options import (
    batch_option,
    input_size_option,
    json_option,
    print_json,
    seed_option,
    weights_option,
)
from edgecompile.errors import EdgecompileError


@click.command("models")
@click.argument("pattern", required=False)
@json_option
def models_command(pattern: str | None, as_json: bool) -> None:
    """List the zoo: name, family, task, input size, params and multiply-adds.

    PATTERN filters names: a substring (`mobilenet`) or a glob (`shufflenet_v1_g8*`).
    Counting builds each model once, so a long list takes a few seconds.

    \b
    Examples:
      edgecompile models
      edgecompile models 'shufflenet_v1_g8*'
      edgecompile models mobilenet --json
    """
    from edgecompile._table import format_table, human_count
    from edgecompile.inspection import summarize_model
    from edgecompile.zoo import list_models

    names = list_models(pattern)
    if not names:
        raise EdgecompileError(f"no model matches {pattern!r}", "run `edgecompile models` for all")
    summaries = [summarize_model(name) for name in names]
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
        )
        for s in summaries
    ]
    click.echo(format_table(("model", "family", "task", "input", "params", "multiply-adds"), rows))


@click.command("inspect")
@click.argument("model")
@input_size_option
@json_option
def inspect_command(model: str, input_size: str | None, as_json: bool) -> None:
    """Per-layer cost of MODEL: op, output shape, params, multiply-adds and memory access cost.

    Memory access cost (MAC) is ShuffleNet v2's: what a layer reads and writes, in elements.
    The findings at the end measure the model against that paper's four guidelines (G1 equal
    channel widths, G2 group-conv cost, G3 fragmentation, G4 element-wise work).

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
    rows = [
        (
            layer.layer,
            layer.op,
            layer.op_class,
            "x".join(map(str, layer.output_shape)),
            f"{layer.params:,}" if layer.params else "-",
            human_count(layer.multiply_adds) if layer.multiply_adds else "-",
            human_count(layer.memory_access) if layer.memory_access else "-",
        )
        for layer in cost.layers
    ]
    click.echo(format_table(("layer", "op", "class", "output", "params", "mult-adds", "MAC"), rows))
    click.echo(
        f"\n{cost.name} at {'x'.join(map(str, cost.input_shape))}: {cost.params:,} params, "
        f"{human_count(cost.multiply_adds)} multiply-adds, {human_count(cost.memory_access)} MAC"
    )
    for finding in cost.findings:
        click.echo(f"  {finding.guideline}: {finding.summary}")


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
    from edgecompile.export import export_onnx, load_torch_model

    torch_model = load_torch_model(
        model, input_size=input_size, batch=batch, seed=seed, weights=weights
    )
    path = output or f"{model.replace(':', '_').replace('.', '_')}.onnx"
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
