"""``edgecompile deploy``: a built library copied to a board over SSH."""

from __future__ import annotations

import click

from edgecompile.cli.options import board_access, json_option, print_json
from edgecompile.device.access import BoardAccess


@click.command("deploy")
@click.argument("artifact", type=click.Path(exists=True))
@board_access(
    "device", "identity", "accept_new_host_key", "remote_dir", "remote_python",
    required=("device",),
)  # fmt: skip
@json_option
def deploy_command(artifact: str, access: BoardAccess, as_json: bool) -> None:
    """Copy ARTIFACT to a board over SSH, checked (arch, TVM version, sha256) and atomic.

    The board gets REMOTE_DIR/<model>-<target>/ with the library and manifest.json; an
    identical library already there is not uploaded again. A bundle (`build --bundle`) brings
    the native runtime and edgecompile-runner too, and is checked against the board's arch and
    glibc instead of its Python: no Python is needed on the board. A plain ARTIFACT sent to a
    board without TVM Python is bundled first (`<ARTIFACT>-bundle/`, beside it). `run` and
    `bench` with --device deploy by themselves: this is for running the library with your own
    code on the board.

    \b
    Examples:
      edgecompile deploy build/shufflenet_v1-rpi4 --device pi@raspberrypi.local
      edgecompile deploy build/shufflenet_v1-rpi3-armv7-bundle --device pi@raspberrypi.local
      edgecompile deploy build/mobilenet_v2-rpi4 --device pi@10.0.0.5:2222 -i ~/.ssh/pi_key \\
          --remote-dir /opt/models --json
    """
    from edgecompile.device.deploy import deploy

    result = deploy(artifact, access)
    if as_json:
        print_json(result.to_dict())
        return
    verb = "uploaded" if result.uploaded else "already up to date:"
    click.echo(f"{verb} {result.library} on {result.device} ({result.seconds:.1f} s)")
    info = result.board
    if result.runner:
        click.echo(f"board: {info.machine}, {info.glibc or 'glibc ?'}; run it with {result.runner}")
    else:
        click.echo(f"board: {info.machine}, TVM {info.tvm_version} at {info.python}")
