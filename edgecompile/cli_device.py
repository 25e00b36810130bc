"""Command-line commands for boards: ``device emulate|status|stop``, ``deploy`` and ``bench``.

They register on the ``cli`` group of :mod:`edgecompile.cli`, which imports this module last;
``run --device/--rpc/--tracker`` lives with the local ``run`` in cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgecompile.cli import _print_json, board_options, cli

# --------------------------------------------------------------------------------------------
# device group


@cli.group("device")
def device_group() -> None:
    """An emulated Raspberry Pi, to try deploy/run/bench without hardware.

    \b
    Examples:
      edgecompile device emulate rpi4
      edgecompile device status
      edgecompile deploy build/shufflenet_v1-rpi4 --device pi@raspberrypi.local
      edgecompile device stop
    """


@device_group.command("emulate")
@click.argument("name", default="rpi4")
@click.option(
    "--dir", "state_dir", type=click.Path(file_okay=False),
    help="State folder (host key, log, PIDs) [~/.cache/edgecompile/boards/NAME].",
)  # fmt: skip
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
@click.option("--json", "as_json", is_flag=True, help="Print the board's state as JSON.")
def emulate_command(
    name: str,
    state_dir: str | None,
    ssh_port: int,
    rpc_port: int,
    tracker: str | None,
    rpc_key: str | None,
    authorized_key: str | None,
    as_json: bool,
) -> None:
    """Start an emulated NAME board (qemu + arm64 Debian): sshd and a TVM RPC server.

    Both listen on 127.0.0.1 only; SSH takes keys only. The first start builds the arm64
    rootfs (~5 min, needs root and network); later starts take ~20 s. Latency measured on it
    says nothing about the real board.
    """
    from edgecompile.device import board, emulator

    directory = Path(state_dir) if state_dir else board.default_state_dir(name)
    rootfs = emulator.ensure_rootfs(progress=lambda line: click.echo(f"[rootfs] {line}", err=True))
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
    )
    if as_json:
        _print_json({**state.to_dict(), "identity": str(identity) if identity else None})
        return
    login = f" --identity {identity}" if identity else ""
    click.echo(f"emulated {name} ({state.cpu}) is running; state in {state.state_dir}")
    click.echo(f"  ssh      {state.device}  (host key {state.host_key_fingerprint})")
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
    click.echo(f"  edgecompile bench build/shufflenet_v1-{name} --rpc {state.rpc}")
    click.echo(f"stop it with: edgecompile device stop --dir {state.state_dir}")
    click.echo(f"warning: {board.EMULATION_WARNING}", err=True)


@device_group.command("status")
@click.argument("name", default="rpi4")
@click.option("--dir", "state_dir", type=click.Path(file_okay=False), help="State folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(name: str, state_dir: str | None, as_json: bool) -> None:
    """Is the emulated board up, and what listens where? Exit code 1 when it is not running."""
    from edgecompile.device import board

    current = board.status(state_dir, name)
    if as_json:
        _print_json(current.to_dict())
    elif current.state is None:
        click.echo(f"no emulated board recorded in {current.state_dir}")
    else:
        state = current.state
        word = "running" if current.running else "NOT running"
        click.echo(f"emulated {state.name} ({state.cpu}): {word} since {state.started_at}")
        click.echo(f"  ssh {state.device}, rpc {state.rpc}, supervisor pid {state.init.pid}")
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
@click.option("--dir", "state_dir", type=click.Path(file_okay=False), help="State folder.")
def stop_command(name: str, state_dir: str | None) -> None:
    """Stop the emulated board: only the processes it started; its mounts go with them."""
    from edgecompile.device import board

    current = board.status(state_dir, name)
    if board.stop(state_dir, name):
        click.echo(f"stopped the emulated {name} ({current.state_dir})")
    else:
        click.echo(f"no emulated board was running from {current.state_dir}")


@cli.command("deploy")
@click.argument("artifact", type=click.Path(exists=True))
@click.option("--device", required=True, help="user@host[:port] (honours ~/.ssh/config).")
@click.option("--identity", "-i", type=click.Path(dir_okay=False), help="SSH private key file.")
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record a first-seen key.")
@click.option("--remote-dir", default="~/edgecompile", show_default=True, help="Board folder.")
@click.option("--remote-python", help="The board's Python with TVM.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def deploy_command(
    artifact: str,
    device: str,
    identity: str | None,
    accept_new_host_key: bool,
    remote_dir: str,
    remote_python: str | None,
    as_json: bool,
) -> None:
    """Copy ARTIFACT to a board over SSH, checked (arch, TVM version, sha256) and atomic."""
    from edgecompile.device.ssh import deploy

    result = deploy(
        artifact,
        device,
        identity=identity,
        remote_dir=remote_dir,
        accept_new_host_key=accept_new_host_key,
        remote_python=remote_python,
    )
    if as_json:
        _print_json(result.to_dict())
        return
    verb = "uploaded" if result.uploaded else "already up to date:"
    click.echo(f"{verb} {result.library} on {result.device} ({result.seconds:.1f} s)")
    info = result.board
    click.echo(f"board: {info.machine}, TVM {info.tvm_version} at {info.python}")


# --------------------------------------------------------------------------------------------
# bench


@cli.command("bench")
@click.argument("artifact", type=click.Path(exists=True))
@board_options
@click.option("--threads", type=int, help="TVM thread-pool size on the board [all cores].")
@click.option("--repeat", type=int, default=20, show_default=True, help="Timed runs.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs first.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def bench_command(
    artifact: str,
    device: str | None,
    rpc: str | None,
    tracker: str | None,
    rpc_key: str | None,
    identity: str | None,
    accept_new_host_key: bool,
    remote_dir: str | None,
    remote_python: str | None,
    threads: int | None,
    repeat: int,
    warmup: int,
    seed: int,
    as_json: bool,
) -> None:
    """Measure one inference's latency ON the board: median, p90, mean, std, min.

    Give exactly one of --device (SSH), --rpc or --tracker. Timing runs on the board (TVM's
    time_evaluator on the Relax VM), so network time is not counted.

    \b
    Examples:
      edgecompile bench build/shufflenet_v1-rpi4 --device pi@raspberrypi.local --threads 4
      edgecompile bench build/mobilenet_v2-rpi4 --tracker 10.0.0.5:9190 --rpc-key rpi4 --json
    """
    from edgecompile.device.remote import bench_on_device

    result = bench_on_device(
        artifact,
        device=device,
        rpc=rpc,
        tracker=tracker,
        rpc_key=rpc_key,
        identity=identity,
        accept_new_host_key=accept_new_host_key,
        remote_dir=remote_dir,
        remote_python=remote_python,
        threads=threads,
        repeat=repeat,
        warmup=warmup,
        seed=seed,
    )
    if as_json:
        _print_json(result.to_dict())
        return
    board = result.board
    cpu = board.get("cpu_model") or board.get("triple") or "unknown CPU"
    cores = f", {board['cores']} cores" if board.get("cores") else ""
    governor = f", governor {board['governor']}" if board.get("governor") else ""
    click.echo(
        f"{result.model} ({result.preset}) on {result.target} via {result.transport}: "
        f"{cpu}{cores}{governor}, {result.threads or '?'} TVM threads"
    )
    click.echo(
        f"  median {result.median_ms:.2f} ms  p90 {result.p90_ms:.2f} ms  mean "
        f"{result.mean_ms:.2f} ms  std {result.std_ms:.2f} ms  min {result.min_ms:.2f} ms"
    )
    click.echo(f"  {result.repeat} timed runs after {result.warmup} warm-up runs")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
