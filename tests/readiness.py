"""Starting a service in a test: a free loopback port for it, and waiting for it to say it is ready
(``/readyz``); shared by the tests that start one."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import pytest


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(base: str, *, timeout: float, stopped: Callable[[], str | None], poll: float = 0.5) -> None:
    """Poll ``base/readyz`` until it answers 200. The test fails with ``stopped()``'s reason when the
    service stops while starting (``stopped`` returns None while it runs), or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = stopped()
        if reason is not None:
            pytest.fail(reason)
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    pytest.fail(f"the service was not ready within {timeout:.0f} s: {stopped() or 'still starting'}")
