"""Command-line commands for boards: ``device setup|emulate|status|stop``, ``deploy`` and ``bench``.

They register on the ``cli`` group of :mod:`edgecompile.cli`, which imports this module last;
``run --device/--rpc/--tracker`` lives with the local ``run`` in cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgecompile.cli import _print_json, board_options, cli
from edgecompile.errors import EdgecompileError

# --------------------------------------------------------------------------------------------
# device group


@cli.group("device")
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


@device_group.command("setup")
@click.argument("device")
@click.option("--identity", "-i", type=click.Path(dir_okay=False), help="SSH private key file.")
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record a first-seen key.")
@click.option(
    "--venv", default="~/edgecompile-venv", show_default=True,
    help="The board's venv (deploy/run/bench look in ~/edgecompile-venv first).",
)  # fmt: skip
@click.option("--index-url", help="Package index for pip on the board (e.g. an offline mirror).")
@click.option("--dry-run", is_flag=True, help="Inspect the board and print the plan only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def setup_command(
    device: str,
    identity: str | None,
    accept_new_host_key: bool,
    venv: str,
    index_url: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Prepare a real board (user@host[:port]): a venv with this machine's exact TVM.

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
        device,
        venv=venv,
        identity=identity,
        accept_new_host_key=accept_new_host_key,
        index_url=index_url,
        dry_run=dry_run,
        on_step=None if as_json else show,
    )
    if as_json:
        _print_json(result.to_dict())
        return
    if dry_run:
        click.echo("dry run: nothing was changed on the board")
    elif not result.changed:
        click.echo(f"{result.device} is ready; nothing changed")
    else:
        click.echo(f"{result.device} is ready")
    if venv != DEFAULT_VENV and not dry_run:
        click.echo(f"pass --remote-python {result.python} to deploy, run and bench")


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
@click.argument("source", metavar="MODEL|ARTIFACT")
@board_options
@click.option(
    "--threads",
    help="Thread counts, e.g. 1,2 [here: 1; on a board: one count, default all cores].",
)
@click.option("--repeat", type=int, default=20, show_default=True, help="Timed runs.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs first.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input.")
@click.option(
    "-t", "--target",
    help="Here only: the preset to build MODEL for; it must run on this machine [host].",
)  # fmt: skip
@click.option(
    "--compare",
    help="Here only: engines to time next to TVM, comma-separated: ort, torch [ort,torch].",
)
@click.option("--input-size", help="Here only: HEIGHT or HEIGHTxWIDTH for building MODEL.")
@click.option(
    "-o", "--output-dir", type=click.Path(file_okay=False),
    help="Here only: keep the build of MODEL in this folder [a temporary one].",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def bench_command(
    source: str,
    device: str | None,
    rpc: str | None,
    tracker: str | None,
    rpc_key: str | None,
    identity: str | None,
    accept_new_host_key: bool,
    remote_dir: str | None,
    remote_python: str | None,
    threads: str | None,
    repeat: int,
    warmup: int,
    seed: int,
    target: str | None,
    compare: str | None,
    input_size: str | None,
    output_dir: str | None,
    as_json: bool,
) -> None:
    """Measure one inference's latency: here against ONNX Runtime and torch, or ON a board.

    \b
    Here (no --device/--rpc/--tracker): MODEL (zoo name or .onnx) is built for this machine,
    or a host ARTIFACT is used as is. TVM, ONNX Runtime and torch get the same seeded input
    and the same thread count (one process per count: TVM's pool size is process-global);
    outputs must agree (relative error <= 1e-4) before any time is printed. The table gives
    median, p90 and min per engine and thread count, and median / ORT median.

    \b
    On a board: give exactly one of --device (SSH), --rpc or --tracker, and an ARTIFACT built
    for it. Timing runs on the board (TVM's time_evaluator on the Relax VM), so network time
    is not counted: median, p90, mean, std, min. Under them: this machine's latest numbers
    for the same model and input size, and board/host.

    \b
    Every bench appends its numbers to a history, $EDGECOMPILE_BENCH_HISTORY or
    ~/.cache/edgecompile/bench.jsonl, where board benches find the host's.

    \b
    Examples:
      edgecompile bench squeezenet1_1 --threads 1,2
      edgecompile bench build/mobilenet_v2-host --compare ort --json
      edgecompile bench build/shufflenet_v1-rpi4 --device pi@raspberrypi.local --threads 4
      edgecompile bench build/mobilenet_v2-rpi4 --tracker 10.0.0.5:9190 --rpc-key rpi4 --json
    """
    if not (device or rpc or tracker):
        _bench_here(
            source,
            board={
                "rpc_key": rpc_key,
                "identity": identity,
                "accept_new_host_key": accept_new_host_key,
                "remote_dir": remote_dir,
                "remote_python": remote_python,
            },
            threads=threads,
            repeat=repeat,
            warmup=warmup,
            seed=seed,
            target=target,
            compare=compare,
            input_size=input_size,
            output_dir=output_dir,
            as_json=as_json,
        )
        return
    local_only = {"--target": target, "--compare": compare, "--input-size": input_size}
    local_only["--output-dir"] = output_dir
    given = [name for name, value in local_only.items() if value is not None]
    if given:
        raise EdgecompileError(
            f"{', '.join(given)}: options for benchmarking here",
            "drop them to bench on the board (build for it first with `edgecompile build`)",
        )
    if not Path(source).exists():
        raise click.BadParameter(f"Path {source!r} does not exist.", param_hint="'ARTIFACT'")
    from edgecompile.bench import format_host_comparison, parse_list

    counts = parse_list(threads, int)
    if len(counts) > 1:
        raise EdgecompileError("on a board, --threads takes one count", "e.g. --threads 4")
    artifact = source
    threads_on_board = counts[0] if counts else None
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
        threads=threads_on_board,
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
    click.echo(format_host_comparison(result))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


def _bench_here(
    source: str,
    *,
    board: dict[str, object],
    threads: str | None,
    repeat: int,
    warmup: int,
    seed: int,
    target: str | None,
    compare: str | None,
    input_size: str | None,
    output_dir: str | None,
    as_json: bool,
) -> None:
    """``bench`` without a board option: :func:`edgecompile.bench.bench_local`, printed."""
    from edgecompile._table import format_table
    from edgecompile.bench import bench_local, parse_list

    given = [f"--{key.replace('_', '-')}" for key, value in board.items() if value]
    if given:
        raise EdgecompileError(
            f"{', '.join(given)}: options for benchmarking on a board",
            "add --device, --rpc or --tracker (or drop them to bench here)",
        )
    report = bench_local(
        source,
        target=target or "host",
        compare=parse_list("ort,torch" if compare is None else compare),
        threads=parse_list(threads, int) or [1],
        repeat=repeat,
        warmup=warmup,
        seed=seed,
        input_size=input_size,
        output_dir=output_dir,
    )
    if as_json:
        _print_json(report.to_dict())
        return
    rows = [
        (
            t.engine,
            t.threads,
            f"{t.median_ms:.3f}",
            f"{t.p90_ms:.3f}",
            f"{t.min_ms:.3f}",
            f"{t.ratio_to_ort:.2f}x" if t.ratio_to_ort is not None else "-",
            f"{t.max_relative_error:.1e}" if t.max_relative_error is not None else "-",
        )
        for t in report.timings
    ]
    shape = ", ".join("x".join(map(str, s)) for s in report.input_shapes)
    click.echo(f"{report.model} ({shape}) here, {report.artifact}")
    headers = ("engine", "threads", "median ms", "p90 ms", "min ms", "vs ORT", "rel. err")
    click.echo(format_table(headers, rows))
    click.echo(
        f"{report.repeat} timed runs after {report.warmup} warm-up runs per engine; outputs "
        f"checked against {report.reference} first; vs ORT = median / ORT median, same threads"
    )
    for note in report.notes:
        click.echo(f"note: {note}", err=True)


@cli.command("profile")
@click.argument("source", metavar="ARTIFACT|MODEL")
@click.option("--runs", type=int, default=10, show_default=True, help="Instrumented runs.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs first.")
@click.option("--threads", type=int, help="TVM thread-pool size [all cores].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input.")
@click.option("--input-size", help="HEIGHT or HEIGHTxWIDTH for building MODEL.")
@click.option(
    "-o", "--output-dir", type=click.Path(file_okay=False),
    help="Keep the build of MODEL in this folder [a temporary one].",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def profile_command(
    source: str,
    runs: int,
    warmup: int,
    threads: int | None,
    seed: int,
    input_size: str | None,
    output_dir: str | None,
    as_json: bool,
) -> None:
    """Per-kernel time of the compiled host model, slowest first, with each kernel's share.

    Times come from instrumenting the Relax VM around every packed call (median over --runs).
    Kernels are joined to the manifest's schedules by order within an op kind (best effort:
    fusion renames them); "-" marks a kernel with no schedule entry (layout/glue kernels).

    \b
    Examples:
      edgecompile profile build/mobilenet_v2-host
      edgecompile profile squeezenet1_1 --input-size 64 --json
    """
    from edgecompile._table import format_table
    from edgecompile.bench import profile_local

    report = profile_local(
        source,
        runs=runs,
        warmup=warmup,
        threads=threads,
        seed=seed,
        input_size=input_size,
        output_dir=output_dir,
    )
    if as_json:
        _print_json(report.to_dict())
        return
    rows = [
        (
            layer.name,
            layer.calls,
            f"{layer.time_ms:.3f}",
            f"{layer.share:.1f}%",
            layer.op or "-",
            layer.schedule or "- (unmatched)",
        )
        for layer in report.layers
    ]
    click.echo(f"{report.model} here, {report.artifact}")
    click.echo(format_table(("kernel", "calls", "ms", "share", "op", "schedule"), rows))
    gap = 100.0 * (report.layer_sum_ms / report.end_to_end_ms - 1) if report.end_to_end_ms else 0
    click.echo(
        f"sum of kernels {report.layer_sum_ms:.3f} ms vs end-to-end median "
        f"{report.end_to_end_ms:.3f} ms ({gap:+.1f}%, instrumented runs: {report.runs})"
    )
    unmatched = sum(1 for layer in report.layers if not layer.matched)
    click.echo(f"{unmatched} of {len(report.layers)} rows have no schedule entry (unmatched)")
