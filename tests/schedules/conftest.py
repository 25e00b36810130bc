"""Fixtures of the schedule tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def host_target() -> Any:
    """This machine's TVM target (the ``host`` preset)."""
    from edgecompile.targets import resolve_target

    return resolve_target("host").tvm_target()
