"""The top-level ``edgecompile`` group, the commands it is made of, and :func:`main`.

The command modules know nothing of this group: each defines its command (or group of
commands) with the helpers of :mod:`edgecompile.cli.options`, and this module adds them.
"""

from __future__ import annotations

import sys

import click

from edgecompile._interrupts import (
    interrupt_exit_code,
    interrupt_message,
    is_interrupt,
    signal_handlers,
)
from edgecompile.cli.bench import bench_command
from edgecompile.cli.build import build_command
from edgecompile.cli.deploy import deploy_command
from edgecompile.cli.device import device_group
from edgecompile.cli.profile import profile_command
from edgecompile.cli.quantize import quantize_command
from edgecompile.cli.records import records_group
from edgecompile.cli.report import report_command
from edgecompile.cli.run import run_command
from edgecompile.cli.targets import targets_command
from edgecompile.cli.tune import tune_command
from edgecompile.cli.zoo import export_command, inspect_command, models_command
from edgecompile.errors import EdgecompileError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgecompile", prog_name="edgecompile")
def cli() -> None:
    """Compile lightweight vision networks from PyTorch into fast libraries for ARM boards.

    \b
    The pipeline, one command per stage:
      models / inspect   the zoo: ShuffleNet, MobileNet, MNASNet, SqueezeNet, Xception, ...
      export             torch -> static-shape ONNX, checked against ONNX Runtime
      build              ONNX -> TVM Relax -> our schedules -> cross-compiled .so for a board
      quantize           static int8 (QDQ ONNX, calibrated on images) + its accuracy vs fp32
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


# Every command of the group (`edgecompile --help` lists them by name).
for command in (
    models_command,
    inspect_command,
    export_command,
    targets_command,
    build_command,
    quantize_command,
    run_command,
    deploy_command,
    bench_command,
    profile_command,
    report_command,
    tune_command,
    records_group,
    device_group,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one `Error: ...` line and exit code 2; Ctrl-C, SIGTERM
    and SIGHUP (however a library wrapped them) one line and 128 + the signal's number."""
    try:
        with signal_handlers():
            cli.main(args=argv, prog_name="edgecompile", standalone_mode=False)
    except SystemExit:
        raise
    except BaseException as exc:
        sys.exit(_exit_code(exc))


def _exit_code(exc: BaseException) -> int:
    """Report ``exc`` on stderr and return the exit code; anything else is a bug, re-raised with
    its traceback."""
    if is_interrupt(exc):  # first: a tool killed by the same Ctrl-C fails with its own error
        code = interrupt_exit_code(exc)
        click.echo(interrupt_message(code), err=True)
        return code
    if isinstance(exc, EdgecompileError):
        click.echo(f"Error: {exc}", err=True)
        return 2
    if isinstance(exc, click.exceptions.Abort):  # a prompt's input ended
        click.echo("Aborted.", err=True)
        return 130
    if isinstance(exc, click.ClickException):
        exc.show()
        return exc.exit_code
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    raise exc
