"""Running a process's event loop (uvloop where installed): one place for the CLI and the
proxy's worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run_loop"]


def run_loop(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` to completion on uvloop if it is installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)
