"""What every test and fixture shares for the network and for waiting: the one `free_port()`
(re-exported by conftest.py), and `until()` (`until_async()` on an event loop that must keep running),
the one way to wait on a condition (never a fixed sleep)."""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(check: Callable[[], Any], timeout: float = 30, what: str = "the condition", interval: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy, and return that; fail naming `what` (and the last value)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


async def until_async(check: Callable[[], Any], timeout: float = 30, what: str = "the condition",
                      interval: float = 0.05) -> Any:
    """until() for code on an event loop: polls `check` without blocking the loop (a controller on it
    keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
