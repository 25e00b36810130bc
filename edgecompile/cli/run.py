"""``edgecompile run``: a built library run here, or on a board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgecompile.cli.options import (
    board_access,
    board_cores,
    check_threads,
    check_writable_file,
    host_cores,
    json_option,
    native_option,
    print_json,
    refuse_board_options,
    seed_option,
    threads_option,
)
from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError


@click.command("run")
@click.argument("artifact", type=click.Path(exists=True))
@click.option(
    "--input", "input_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
    help="A .npy file per model input (default: a seeded random input).",
)  # fmt: skip
@click.option(
    "--random", "use_random", is_flag=True,
    help="Use a seeded random input (what happens without --input).",
)  # fmt: skip
@seed_option
@click.option("--output", type=click.Path(dir_okay=False), help="Save the first output as .npy.")
@threads_option
@board_access()
@native_option
@json_option
def run_command(
    artifact: str,
    input_files: tuple[str, ...],
    use_random: bool,
    seed: int,
    output: str | None,
    threads: int | None,
    access: BoardAccess,
    native: bool,
    as_json: bool,
) -> None:
    """Run a built library, here or on a board, through TVM's runtime loader.

    ARTIFACT is the folder `edgecompile build` wrote (or its .so or manifest.json). Without a
    board option it runs on this machine. With --device user@host (SSH), --rpc host:port or
    --tracker host:port it runs on that board: the library is deployed (sha256-checked and
    atomic over SSH), the inputs shipped as .npy, and the outputs brought back. An RPC server
    or tracker that does not answer in 60 s ($EDGECOMPILE_RPC_TIMEOUT) is an error.

    A float64 (or float16) --input is converted to the library's float32, with a note. The
    library must match its manifest's sha256; --threads is 1 to the cores the target has.

    Over SSH, a board without TVM Python (or a bundle from `build --bundle`, or --native) runs
    the library with the bundle's edgecompile-runner: no Python on the board. The output says
    which ran ("runner" in --json: native, python-tvm or tvm-rpc).

    \b
    Examples:
      edgecompile run build/shufflenet_v1-host --output logits.npy
      edgecompile run build/shufflenet_v1-rpi4 --device pi@raspberrypi.local --input x.npy
      edgecompile run build/shufflenet_v1-rpi4 --rpc 127.0.0.1:9090 --json
      edgecompile run build/shufflenet_v1-rpi3-armv7-bundle --device pi@raspberrypi.local
    """
    # Everything a mistake can be found in is checked first, before torch and TVM load.
    from edgecompile.artifact import load_artifact
    from edgecompile.runner import check_inputs, conform_inputs, load_input_files

    if use_random and input_files:
        raise EdgecompileError("--random and --input exclude each other", "give one of them")
    if access.given:
        from edgecompile.device.remote import check_access

        check_access(access)
        built = load_artifact(artifact)
        check_threads(threads, cores=board_cores(built.manifest.target), where="the board")
    else:
        refuse_board_options(access, "running", "run")
        if native:
            raise EdgecompileError("--native: an option for a board", "add --device user@host")
        check_threads(threads, cores=host_cores(), where="this machine")
        built = load_artifact(artifact)
    if output:
        check_writable_file(output, "--output")
    inputs = None
    if input_files:
        inputs, notes = conform_inputs(built, load_input_files(input_files))
        check_inputs(built, inputs)
        for note in notes:
            click.echo(f"note: {note}", err=True)

    extra: dict[str, Any] = {}
    if access.given:
        from edgecompile.device.remote import run_on_device

        result = run_on_device(
            built, access, inputs, threads=threads, seed=seed, native=native or None
        )
        extra = {
            "transport": result.transport,
            "target": result.target,
            "runner": result.runner,
            "board": result.board,
        }
        runner = {"native": "native runner (no Python)", "python-tvm": "TVM Python"}
        where = (
            f"on {result.target} via {result.transport}, "
            f"{runner.get(result.runner, 'TVM RPC server')}"
        )
    else:
        from edgecompile.runner import run

        result = run(built, inputs, seed=seed, threads=threads)
        where = "here"
    if output:
        _save_output(Path(output), result.outputs[0])
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
        print_json({"seconds": result.seconds, "outputs": summaries, "saved": output, **extra})
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


def _save_output(path: Path, array: Any) -> None:
    """``--output``, written atomically; a full disk is one line, and leaves no partial file."""
    import numpy as np

    from edgecompile._atomic import atomic_file

    try:
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array)
    except OSError as error:
        raise EdgecompileError(
            f"cannot write --output {str(path)!r}: {error.strerror or error}",
            "free some space or give --output a writable place",
        ) from None
