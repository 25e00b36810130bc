"""``edgecompile device setup|emulate|status|stop``: prepare a real board, or emulate one."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgecompile.cli.options import board_access, json_option, print_json
from edgecompile.device.access import BoardAccess

#: ``--dir`` of emulate, status and stop.
state_dir_option = click.option(
    "--dir", "state_dir", type=click.Path(file_okay=False),
    help="The board's state folder (host key, log, PIDs) [~/.cache/edgecompile/boards/NAME].",
)  # fmt: skip


@click.group("device")
def device_group() -> None:
    """Boards: prepare a real one (setup), or emulate a Raspberry Pi without hardware.

    \b
    Examples:
      edgecompile device setup pi@raspberrypi.local
      edgecompile device emulate rpi4
      edgecompile device status
      edgecompile deploy build/shufflenet_v1-rpi4 --device pi@raspberrypi.local
      edgecompile device stop
    """


@device_group.command("emulate")
@click.argument("name", default="rpi4")
@state_dir_option
@click.option("--ssh-port", type=int, default=2222, show_default=True, help="sshd on 127.0.0.1.")
@click.option(
    "--rpc-port", type=int, default=9090, show_default=True, help="TVM RPC server on 127.0.0.1."
)
@click.option(
    "--tracker", help="Also register an RPC server (on --rpc-port + 1) with this tracker."
)
@click.option("--rpc-key", help="Key to register with the tracker [NAME].")
@click.option(
    "--authorized-key", type=click.Path(dir_okay=False, exists=True),
    help="Public key allowed to log in [a new key pair DIR/id_ed25519].",
)  # fmt: skip
@click.option(
    "--native", is_flag=True,
    help="A board without Python (sshd only): run/bench use a bundle's native runner. "
    "Always so for rpi3-armv7, rpi4-armv7 and armv7.",
)  # fmt: skip
@json_option
def emulate_command(
    name: str,
    state_dir: str | None,
    ssh_port: int,
    rpc_port: int,
    tracker: str | None,
    rpc_key: str | None,
    authorized_key: str | None,
    native: bool,
    as_json: bool,
) -> None:
    """Start an emulated NAME board (qemu + arm64 Debian): sshd and a TVM RPC server.

    Both listen on 127.0.0.1 only; SSH takes keys only. The first start builds the arm64
    rootfs (~5 min, needs root and network); later starts take ~20 s. Latency measured on it
    says nothing about the real board.

    With --native, and always for the 32-bit boards (rpi3-armv7, rpi4-armv7, armv7: an armhf
    Debian under qemu-arm), the board has no Python at all and serves sshd only: deploy, run
    and bench --device ship a bundle (`build --bundle`) and use its native runner.

    \b
    Examples:
      edgecompile device emulate
      edgecompile device emulate rpi4 --ssh-port 2200 --rpc-port 9000 --json
      edgecompile device emulate --tracker 127.0.0.1:9190 --rpc-key rpi4
      edgecompile device emulate rpi3-armv7 --ssh-port 2223
      edgecompile device emulate rpi4 --native --dir /tmp/rpi4-native --ssh-port 2224
    """
    from edgecompile.device import board, emulator
    from edgecompile.device.native_rootfs import ensure_native_rootfs

    native = native or name in board.ARMV7_BOARDS
    directory = (
        Path(state_dir)
        if state_dir
        else board.default_state_dir(
            f"{name}-native" if native and name not in board.ARMV7_BOARDS else name
        )
    )

    def say(line: str) -> None:
        click.echo(f"[rootfs] {line}", err=True)

    if native:
        arch = "arm" if name in board.ARMV7_BOARDS else "aarch64"
        rootfs = ensure_native_rootfs(arch, progress=say)
    else:
        rootfs = emulator.ensure_rootfs(progress=say)
    identity: Path | None = None
    if authorized_key is None:
        identity = directory / "id_ed25519"
        directory.mkdir(parents=True, exist_ok=True)
        board.generate_client_key(identity, comment=f"edgecompile-{name}")
        authorized_key = str(identity.with_name(identity.name + ".pub"))
    state = board.start_emulated_board(
        name,
        ssh_port=ssh_port,
        rpc_port=rpc_port,
        state_dir=directory,
        authorized_key=authorized_key,
        tracker=tracker,
        rpc_key=rpc_key,
        rootfs=rootfs,
        native=native,
    )
    if as_json:
        print_json({**state.to_dict(), "identity": str(identity) if identity else None})
        return
    login = f" --identity {identity}" if identity else ""
    click.echo(f"emulated {name} ({state.cpu}) is running; state in {state.state_dir}")
    click.echo(f"  ssh      {state.device}  (host key {state.host_key_fingerprint})")
    if state.kind == board.NATIVE:
        click.echo("  no Python on the board: run and bench --device use the native runner")
    else:
        click.echo(f"  rpc      {state.rpc}")
    if state.tracker:
        click.echo(
            f"  tracker  {state.tracker} key {state.rpc_key} (server on "
            f"127.0.0.1:{state.tracked_rpc_port})"
        )
    click.echo("try:")
    click.echo(
        f"  edgecompile run build/shufflenet_v1-{name} --device {state.device}{login} "
        "--accept-new-host-key"
    )
    if state.kind == board.NATIVE:
        click.echo(
            f"  edgecompile bench build/shufflenet_v1-{name}-bundle --device {state.device}{login}"
        )
    else:
        click.echo(f"  edgecompile bench build/shufflenet_v1-{name} --rpc {state.rpc}")
    click.echo(f"stop it with: edgecompile device stop --dir {state.state_dir}")
    click.echo(f"warning: {board.EMULATION_WARNING}", err=True)


@device_group.command("status")
@click.argument("name", default="rpi4")
@state_dir_option
@json_option
def status_command(name: str, state_dir: str | None, as_json: bool) -> None:
    """Is the emulated board up, and what listens where? Exit code 1 when it is not running.

    \b
    Examples:
      edgecompile device status
      edgecompile device status --dir /tmp/board --json
    """
    from edgecompile.device import board

    current = board.status(state_dir, name)
    if as_json:
        print_json(current.to_dict())
    elif current.state is None:
        click.echo(f"no emulated board recorded in {current.state_dir}")
    else:
        state = current.state
        word = "running" if current.running else "NOT running"
        click.echo(f"emulated {state.name} ({state.cpu}): {word} since {state.started_at}")
        served = "no Python (native)" if state.kind == board.NATIVE else f"rpc {state.rpc}"
        click.echo(f"  ssh {state.device}, {served}, supervisor pid {state.init.pid}")
        for address, roles in sorted(current.listening.items()):
            click.echo(f"  listening {address}: {', '.join(roles)}")
        for problem in current.problems:
            click.echo(f"  problem: {problem}")
    if not current.running:
        # SystemExit, not click's Exit: cli.main runs click with standalone_mode=False, which
        # turns Exit into a return value that main() does not pass on.
        sys.exit(1)


@device_group.command("stop")
@click.argument("name", default="rpi4")
@state_dir_option
def stop_command(name: str, state_dir: str | None) -> None:
    """Stop the emulated board: only the processes it started; its mounts go with them.

    \b
    Examples:
      edgecompile device stop
      edgecompile device stop --dir /tmp/board
    """
    from edgecompile.device import board

    current = board.status(state_dir, name)
    if board.stop(state_dir, name):
        stopped = current.state.name if current.state else name
        click.echo(f"stopped the emulated {stopped} ({current.state_dir})")
    else:
        click.echo(f"no emulated board was running from {current.state_dir}")


@device_group.command("setup")
@click.argument("device")
@board_access("identity", "accept_new_host_key")
@click.option(
    "--venv", default="~/edgecompile-venv", show_default=True,
    help="The board's venv (deploy/run/bench look in ~/edgecompile-venv first).",
)  # fmt: skip
@click.option("--index-url", help="Package index for pip on the board (e.g. an offline mirror).")
@click.option("--dry-run", is_flag=True, help="Inspect the board and print the plan only.")
@json_option
def setup_command(
    access: BoardAccess,
    venv: str,
    index_url: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Prepare a real board (DEVICE: user@host[:port]): a venv with this machine's exact TVM.

    Checks python3 and the architecture (aarch64; armv7l has no TVM wheel), then creates the
    venv and pip-installs apache-tvm and apache-tvm-ffi at the host's versions plus numpy,
    unless they are already there, and checks that `import tvm` works.

    \b
    Examples:
      edgecompile device setup pi@raspberrypi.local --dry-run
      edgecompile device setup pi@raspberrypi.local --identity ~/.ssh/id_ed25519
    """
    from edgecompile.device.setup import DEFAULT_VENV, SetupStep, setup_device

    def show(step: SetupStep) -> None:
        click.echo(f"  {step.name:<13} {step.status:<13} {step.detail}")

    result = setup_device(
        access,
        venv=venv,
        index_url=index_url,
        dry_run=dry_run,
        on_step=None if as_json else show,
    )
    if as_json:
        print_json(result.to_dict())
        return
    if dry_run:
        click.echo("dry run: nothing was changed on the board")
    elif not result.changed:
        click.echo(f"{result.device} is ready; nothing changed")
    else:
        click.echo(f"{result.device} is ready")
    if venv != DEFAULT_VENV and not dry_run:
        click.echo(f"pass --remote-python {result.python} to deploy, run and bench")
