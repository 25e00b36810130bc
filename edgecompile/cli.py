"""The ``edgecompile`` command line: thin wrappers over the Python API of the same names.

Each command parses its options, calls one library function and prints the result; every
:class:`~edgecompile.errors.EdgecompileError` is caught once, in :func:`main`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgecompile.errors import EdgecompileError


def _print_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgecompile", prog_name="edgecompile")
def cli() -> None:
    """Compile lightweight vision networks from PyTorch into fast libraries for ARM boards.

    \b
    The pipeline, one command per stage:
      models / inspect   the zoo: ShuffleNet, MobileNet, MNASNet, SqueezeNet, Xception, ...
      export             torch -> static-shape ONNX, checked against ONNX Runtime
      build              ONNX -> TVM Relax -> our schedules -> cross-compiled .so for a board
      tune / records     MetaSchedule tuning per target (here or on the board), its records
      targets            the board presets --target accepts
      run                run a built library here, or on a board (--device/--rpc/--tracker)
      deploy             copy a built library to a board over SSH, checked by sha256
      bench              latency here vs ONNX Runtime/torch, or on a board (--device/...)
      profile            per-kernel time of a compiled host model, joined to its schedules
      report             bench + profile over the zoo: tables, plots, FLOPs/MAC vs latency
      device             an emulated Raspberry Pi 4 (qemu) to try all of it without hardware

    \b
    Examples:
      edgecompile models shufflenet
      edgecompile inspect mobilenet_v2
      edgecompile export shufflenet_v2 -o shufflenet_v2.onnx
      edgecompile build shufflenet_v1 --target rpi4
      edgecompile deploy build/shufflenet_v1-rpi4 --device pi@raspberrypi.local
      edgecompile bench build/shufflenet_v1-rpi4 --device pi@raspberrypi.local
    """


@cli.command("models")
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(pattern: str | None, as_json: bool) -> None:
    """List the zoo: name, family, task, input size, params and multiply-adds.

    PATTERN filters names: a substring (`mobilenet`) or a glob (`shufflenet_v1_g8*`).
    Counting builds each model once, so a long list takes a few seconds.
    """
    from edgecompile._table import format_table, human_count
    from edgecompile.inspection import summarize_model
    from edgecompile.zoo import list_models

    names = list_models(pattern)
    if not names:
        raise EdgecompileError(f"no model matches {pattern!r}", "run `edgecompile models` for all")
    summaries = [summarize_model(name) for name in names]
    if as_json:
        _print_json([summary.to_dict() for summary in summaries])
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


@cli.command("inspect")
@click.argument("model")
@click.option("--input-size", help="HEIGHT or HEIGHTxWIDTH (default: the model's own).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_command(model: str, input_size: str | None, as_json: bool) -> None:
    """Per-layer cost of MODEL: op, output shape, params, multiply-adds and memory access cost.

    Memory access cost (MAC) is ShuffleNet v2's: what a layer reads and writes, in elements.
    The findings at the end measure the model against that paper's four guidelines (G1 equal
    channel widths, G2 group-conv cost, G3 fragmentation, G4 element-wise work).
    """
    from edgecompile._table import format_table, human_count
    from edgecompile.export import load_torch_model
    from edgecompile.inspection import inspect_model

    cost = inspect_model(load_torch_model(model, input_size=input_size))
    if as_json:
        _print_json(cost.to_dict())
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


@cli.command("export")
@click.argument("model")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="ONNX file to write [MODEL.onnx]."
)
@click.option("--input-size", help="HEIGHT or HEIGHTxWIDTH (default: the model's own).")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size (static).")
@click.option(
    "--weights",
    type=click.Path(),
    help="A state_dict file to load instead of seeded random weights.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for random weights and the check input.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
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
    than 1e-4 (max relative error).
    """
    from edgecompile.export import export_onnx, load_torch_model

    torch_model = load_torch_model(
        model, input_size=input_size, batch=batch, seed=seed, weights=weights
    )
    path = output or f"{model.replace(':', '_').replace('.', '_')}.onnx"
    exported = export_onnx(torch_model, path, seed=seed)
    if as_json:
        _print_json(
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


def board_options(function: Any) -> Any:
    """Where to run and how to log in: shared by ``run``, ``deploy`` and ``bench``."""
    options = [
        click.option("--device", help="Run over SSH on user@host[:port] (honours ~/.ssh/config)."),
        click.option("--rpc", help="Run through a TVM RPC server at host:port."),
        click.option("--tracker", help="Run on a board from the TVM RPC tracker at host:port."),
        click.option("--rpc-key", help="The tracker key to request [the preset's, e.g. rpi4]."),
        click.option(
            "--identity", "-i", type=click.Path(dir_okay=False), help="SSH private key file."
        ),
        click.option(
            "--accept-new-host-key",
            is_flag=True,
            help="Trust and record an SSH host key seen for the first time (changed keys are "
            "always refused).",
        ),
        click.option("--remote-dir", help="Where artifacts go on the board [~/edgecompile]."),
        click.option(
            "--remote-python", help="The board's Python with TVM [~/edgecompile-venv, ...]."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (full TVM targets) instead.")
def targets_command(as_json: bool) -> None:
    """List the board presets `--target` accepts.

    \b
    --target also takes, in this order after the preset names:
      ./board.toml           a preset file of your own (same format as the built-in table)
      raspberry-pi/4b-aarch64  a TVM target tag
      '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}'  raw TVM JSON
    """
    from edgecompile._table import format_table
    from edgecompile.schedules import cpu_info
    from edgecompile.targets import list_presets

    presets = list_presets()
    caches = {p.name: cpu_info(p.tvm_target()).caches for p in presets}
    if as_json:
        _print_json(
            [{**p.to_dict(), "caches": [c._asdict() for c in caches[p.name]]} for p in presets]
        )
        return
    rows = [
        (
            p.name,
            p.triple,
            p.target.get("mcpu", "generic"),
            p.threads,
            " ".join(level.short() for level in caches[p.name]),
            p.description,
        )
        for p in presets
    ]
    header = ("preset", "triple", "cpu", "threads", "caches (/cores sharing)", "board")
    click.echo(format_table(header, rows))


#: ``--target`` of the commands that compile for a board (build, tune, records).
target_option = click.option(
    "-t", "--target", default="host", show_default=True,
    help="Board preset (see `edgecompile targets`), preset .toml, TVM tag or target JSON.",
)  # fmt: skip


@cli.command("build")
@click.argument("model")
@target_option
@click.option(
    "-o", "--output-dir", default="build", show_default=True, type=click.Path(file_okay=False),
    help="Where to write <model>-<target>/.",
)  # fmt: skip
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size (static).")
@click.option("--input-size", help="HEIGHT or HEIGHTxWIDTH (default: the model's own).")
@click.option("--weights", type=click.Path(), help="A state_dict file instead of random weights.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights and checks.")
@click.option(
    "--cc", help="Link with this system compiler (e.g. aarch64-linux-gnu-g++) instead of zig."
)
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime check of host libraries.")
@click.option(
    "--no-custom-schedules", is_flag=True,
    help="Compile every op with TVM's default lowering (plain loops) instead of our schedules.",
)  # fmt: skip
@click.option(
    "--records", type=click.Path(file_okay=False),
    help="Apply the tuning records in this folder [the cache, when it has records for TARGET].",
)  # fmt: skip
@click.option("--no-records", is_flag=True, help="Ignore tuning records: our schedules only.")
@click.option(
    "--schedules", "schedules_dir", type=click.Path(), metavar="DIR",
    help="A directory of user schedules (.py files), tried before ours "
    "(docs/custom-schedules.md).",
)  # fmt: skip
@click.option(
    "--explain", is_flag=True,
    help="After the build, print per layer the schedule that ran and why a rule fell back.",
)  # fmt: skip
@click.option("--tar", "pack", is_flag=True, help="Also pack the artifact as <dir>.tar.gz.")
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print the manifest as JSON (its `schedules` holds what --explain prints).",
)  # fmt: skip
def build_command(
    model: str,
    target: str,
    output_dir: str,
    batch: int,
    input_size: str | None,
    weights: str | None,
    seed: int,
    cc: str | None,
    no_verify: bool,
    no_custom_schedules: bool,
    records: str | None,
    no_records: bool,
    schedules_dir: str | None,
    explain: bool,
    pack: bool,
    as_json: bool,
) -> None:
    """Compile MODEL into a shared library for a board.

    MODEL is a zoo name (`edgecompile models`), an ONNX file (model.onnx), or
    pkg.module:function returning a torch nn.Module. The pipeline: torch -> static ONNX ->
    TVM Relax -> compile for the target's CPU -> link with the target's toolchain (the bundled
    zig cross toolchain by default). Libraries built for this machine are checked against
    ONNX Runtime on a seeded input before the build counts as done.

    \b
    Tuning records (`edgecompile tune`) for the target are applied when there are any: per
    kernel, the fastest measured schedule -- tuned or ours.

    --schedules DIR adds schedules of your own: every .py file in DIR is imported and the rules
    it registers (edgecompile.schedules.user) are tried before ours on each kernel. --explain
    prints, per layer, who scheduled it (ours / user / records / tvm-default) and why a rule
    fell back.

    \b
    Writes OUTPUT_DIR/<model>-<target>/ with <model>.so and manifest.json, atomically.
    Examples:
      edgecompile build shufflenet_v1 --target rpi4
      edgecompile build mobilenet_v2 --target host --input-size 160
      edgecompile build my_model.onnx --target rpi4-armv7 --batch 4
      edgecompile build espnet_v2 --schedules examples/schedules --explain
    """
    from edgecompile.artifact import pack_artifact
    from edgecompile.builder import BUILD_STAGES, build
    from edgecompile.progress import Progress

    result = build(
        model,
        target,
        output_dir=output_dir,
        batch=batch,
        input_size=input_size,
        weights=weights,
        seed=seed,
        cc=cc,
        verify=not no_verify,
        custom_schedules=not no_custom_schedules,
        records=False if no_records else records,
        progress=Progress(BUILD_STAGES),
        schedules_dir=schedules_dir,
    )
    artifact = result.artifact
    archive = pack_artifact(artifact) if pack else None
    if as_json:
        payload = artifact.manifest.to_dict()
        payload["directory"] = str(artifact.directory)
        payload["archive"] = str(archive) if archive else None
        _print_json(payload)
        return
    manifest = artifact.manifest
    click.echo(f"built {artifact.library} ({manifest.arch}, {manifest.weights})")
    verification = manifest.verification or {}
    if verification.get("status") == "passed":
        error = verification["max_relative_error"]
        click.echo(f"verified against ONNX Runtime: max relative error {error:.2e}")
    else:
        click.echo(f"not verified here: {verification.get('reason', 'skipped')}")
    if manifest.records:
        tuned = len(manifest.records["kernels_from_records"])
        click.echo(f"applied tuning records to {tuned} kernels ({manifest.records['store']})")
    if manifest.user_schedules:
        used = sum(rule["kernels"] for rule in manifest.user_schedules["rules"])
        plural = "" if used == 1 else "s"
        directory = manifest.user_schedules["dir"]
        click.echo(f"user schedules scheduled {used} kernel{plural} ({directory})")
    if archive:
        click.echo(f"packed {archive}")
    if explain:
        from edgecompile.explain import format_explain

        click.echo("")
        click.echo(format_explain(manifest.schedules))


@cli.command("run")
@click.argument("artifact", type=click.Path(exists=True))
@click.option(
    "--input", "input_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
    help="A .npy file per model input (default: a seeded random input).",
)  # fmt: skip
@click.option(
    "--random", "use_random", is_flag=True,
    help="Use a seeded random input (what happens without --input).",
)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input.")
@click.option("--output", type=click.Path(dir_okay=False), help="Save the first output as .npy.")
@click.option("--threads", type=int, help="TVM thread-pool size [all cores].")
@board_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def run_command(
    artifact: str,
    input_files: tuple[str, ...],
    use_random: bool,
    seed: int,
    output: str | None,
    threads: int | None,
    device: str | None,
    rpc: str | None,
    tracker: str | None,
    rpc_key: str | None,
    identity: str | None,
    accept_new_host_key: bool,
    remote_dir: str | None,
    remote_python: str | None,
    as_json: bool,
) -> None:
    """Run a built library, here or on a board, through TVM's runtime loader.

    ARTIFACT is the folder `edgecompile build` wrote (or its .so or manifest.json). Without a
    board option it runs on this machine. With --device user@host (SSH), --rpc host:port or
    --tracker host:port it runs on that board: the library is deployed (sha256-checked and
    atomic over SSH), the inputs shipped as .npy, and the outputs brought back.

    \b
    Examples:
      edgecompile run build/shufflenet_v1-host --output logits.npy
      edgecompile run build/shufflenet_v1-rpi4 --device pi@raspberrypi.local --input x.npy
    """
    import numpy as np

    from edgecompile._atomic import atomic_file

    if use_random and input_files:
        raise EdgecompileError("--random and --input exclude each other", "give one of them")
    inputs = [np.load(path) for path in input_files] if input_files else None
    remote = {
        "rpc_key": rpc_key,
        "identity": identity,
        "accept_new_host_key": accept_new_host_key,
        "remote_dir": remote_dir,
        "remote_python": remote_python,
    }
    extra: dict[str, Any] = {}
    if device or rpc or tracker:
        from edgecompile.device.remote import run_on_device

        result = run_on_device(
            artifact, inputs, device=device, rpc=rpc, tracker=tracker, threads=threads,
            seed=seed, **remote,
        )  # fmt: skip
        extra = {"transport": result.transport, "target": result.target, "board": result.board}
        where = f"on {result.target} via {result.transport}"
    else:
        given = [f"--{key.replace('_', '-')}" for key, value in remote.items() if value]
        if given:
            raise EdgecompileError(
                f"{', '.join(given)}: options for running on a board",
                "add --device, --rpc or --tracker (or drop them to run here)",
            )
        from edgecompile.runner import run

        result = run(artifact, inputs, seed=seed, threads=threads)
        where = "here"
    if output:
        with atomic_file(Path(output)) as tmp, open(tmp, "wb") as handle:
            np.save(handle, result.outputs[0])
    summaries = [
        {
            "shape": list(out.shape),
            "dtype": str(out.dtype),
            "min": float(out.min()) if out.size else None,
            "max": float(out.max()) if out.size else None,
            "argmax": int(out.reshape(out.shape[0], -1)[0].argmax()) if out.size else None,
        }
        for out in result.outputs
    ]
    if as_json:
        _print_json({"seconds": result.seconds, "outputs": summaries, "saved": output, **extra})
        return
    for index, summary in enumerate(summaries):
        shape = "x".join(map(str, summary["shape"]))
        click.echo(
            f"output {index}: {summary['dtype']} {shape}, range [{summary['min']:.4g}, "
            f"{summary['max']:.4g}], argmax {summary['argmax']}"
        )
    click.echo(f"ran {where} in {result.seconds * 1e3:.1f} ms (first call, includes warm-up)")
    if output:
        click.echo(f"saved output 0 to {output}")
    if extra.get("board", {}).get("emulated"):
        from edgecompile.device.board import EMULATION_WARNING

        click.echo(f"note: {EMULATION_WARNING}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one `Error: ...` line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="edgecompile", standalone_mode=False)
    except EdgecompileError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


# Board commands (device emulate/status/stop/deploy, bench, run --device/--rpc/--tracker).
import edgecompile.cli_device  # noqa: E402
import edgecompile.cli_tune  # noqa: E402, F401
from edgecompile import cli_report  # noqa: E402, F401
