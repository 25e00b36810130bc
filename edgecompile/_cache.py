"""Where edgecompile keeps what it can rebuild: one root for the caches of every stage."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$EDGECOMPILE_CACHE``, else ``$XDG_CACHE_HOME/edgecompile`` (``~/.cache/edgecompile``)."""
    configured = os.environ.get("EDGECOMPILE_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecompile"
