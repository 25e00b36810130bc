"""How to reach a board: one typed object instead of nine keyword arguments.

``run``, ``bench``, ``deploy``, ``tune --device`` and ``device setup`` all take a
:class:`BoardAccess`; the CLI builds it once from the shared board options.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgecompile.errors import EdgecompileError

#: The transports a board is reached by, as :attr:`BoardAccess.transport` names them.
TRANSPORTS = ("ssh", "rpc", "tracker")


@dataclass(frozen=True)
class BoardAccess:
    """Where a board is and how to log in to it.

    Exactly one of ``device`` (SSH ``user@host[:port]``), ``rpc`` (a TVM RPC server's
    ``host:port``) or ``tracker`` (a TVM RPC tracker's ``host:port``) says where; the rest
    says how (SSH key, host-key policy, folders on the board, the tracker key).

    ``known_hosts`` and ``ssh_config`` replace ``~/.ssh/known_hosts`` and ``~/.ssh/config``
    (tests and scripts; the CLI has no options for them). ``remote_dir`` None is
    ``~/edgecompile``; ``remote_python`` None tries the usual places (``probe.PYTHON_CANDIDATES``).
    """

    device: str | None = None
    rpc: str | None = None
    tracker: str | None = None
    rpc_key: str | None = None
    identity: str | Path | None = None
    accept_new_host_key: bool = False
    known_hosts: str | Path | None = None
    ssh_config: str | Path | None = None
    remote_dir: str | None = None
    remote_python: str | None = None

    @property
    def given(self) -> bool:
        """Whether any of ``device``, ``rpc``, ``tracker`` is set (else: run here)."""
        return bool(self.device or self.rpc or self.tracker)

    @property
    def transport(self) -> str:
        """``"ssh"``, ``"rpc"`` or ``"tracker"``; one line naming the fix unless exactly one
        of them is set."""
        chosen = [name for name, value in zip(TRANSPORTS, self._where(), strict=True) if value]
        if len(chosen) != 1:
            raise EdgecompileError(
                "say where to run: exactly one of --device user@host, --rpc host:port, "
                "--tracker host:port" + (f" (got {', '.join(chosen)})" if chosen else ""),
                "e.g. --device pi@raspberrypi.local",
            )
        return chosen[0]

    def ssh_login(self) -> dict[str, Any]:
        """The keyword arguments of :func:`edgecompile.device.ssh.connect` (besides the host)."""
        return {
            "identity": self.identity,
            "accept_new_host_key": self.accept_new_host_key,
            "known_hosts": self.known_hosts,
            "ssh_config": self.ssh_config,
        }

    def require_device(self, command: str) -> str:
        """``device``, for what works over SSH only (``deploy``, ``device setup``, a tunnel);
        one line naming the fix when it is missing."""
        if not self.device:
            raise EdgecompileError(
                f"{command} works over SSH: it needs the board as user@host[:port]",
                "pass --device user@host (e.g. --device pi@raspberrypi.local)",
            )
        return self.device

    def board_only_options(self) -> list[str]:
        """The options given that only mean something on a board, as ``--option`` names:
        a command running here refuses them rather than ignoring them."""
        where = {"device", "rpc", "tracker"}
        return [
            f"--{field.name.replace('_', '-')}"
            for field in fields(self)
            if field.name not in where and getattr(self, field.name) not in (None, False)
        ]

    def _where(self) -> tuple[str | None, str | None, str | None]:
        return self.device, self.rpc, self.tracker
