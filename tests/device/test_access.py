"""BoardAccess: how to reach a board, as one object (no board needed)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from edgecompile.device import ssh
from edgecompile.device.access import BoardAccess
from edgecompile.errors import EdgecompileError


@pytest.mark.parametrize(
    ("access", "transport"),
    [
        (BoardAccess(device="pi@board"), "ssh"),
        (BoardAccess(rpc="127.0.0.1:9090"), "rpc"),
        (BoardAccess(tracker="127.0.0.1:9190", rpc_key="rpi4"), "tracker"),
    ],
)
def test_transport_is_the_one_place_given(access: BoardAccess, transport: str) -> None:
    assert access.given and access.transport == transport


def test_transport_needs_exactly_one_place() -> None:
    with pytest.raises(EdgecompileError, match=r"exactly one of --device") as raised:
        BoardAccess(identity="key").transport  # noqa: B018
    assert "(got" not in str(raised.value)
    with pytest.raises(EdgecompileError, match=r"\(got ssh, rpc\)"):
        BoardAccess(device="pi@board", rpc="h:1").transport  # noqa: B018
    assert not BoardAccess(remote_dir="/x").given


def test_board_only_options_name_what_was_given() -> None:
    access = BoardAccess(
        rpc_key="k", identity="id", accept_new_host_key=True, remote_dir="/x", remote_python="p"
    )
    assert access.board_only_options() == [
        "--rpc-key", "--identity", "--accept-new-host-key", "--remote-dir", "--remote-python",
    ]  # fmt: skip
    assert BoardAccess(device="pi@board").board_only_options() == []


def test_ssh_login_is_what_connect_takes() -> None:
    login = BoardAccess(device="pi@b", identity="id", known_hosts="kh").ssh_login()
    assert set(login) <= set(inspect.signature(ssh.connect).parameters) - {"device"}
    assert login["identity"] == "id" and login["known_hosts"] == "kh"
    assert login["accept_new_host_key"] is False


def test_require_device_and_frozen() -> None:
    assert BoardAccess(device="pi@b").require_device("deploy") == "pi@b"
    with pytest.raises(EdgecompileError, match="deploy works over SSH"):
        BoardAccess(rpc="h:1").require_device("deploy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        BoardAccess().device = "x"  # type: ignore[misc]
