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
    identical library already there is not uploaded again. `run` and `bench` with --device
    deploy by themselves: this is for running the library with your own code on the board.

    \b
    Examples:
      edgecompile deploy build/shufflenet_v1-rpi4 --device pi@raspberrypi.local
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
    click.echo(f"board: {info.machine}, TVM {info.tvm_version} at {info.python}")
