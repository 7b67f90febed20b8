"""Issue 30, findings 6 and 10 (WebSocket): the failed-key limit counts the real peer, X-Forwarded-For
is believed only from SECONDREADER_TRUSTED_PROXIES, and a WebSocket scope needs the key too.

Before the fix, uvicorn's default (trust X-Forwarded-For from loopback) let anything on the host try
keys without limit by naming a new address each time, lock out any address it named, and forge the
access log's client address; the middleware let every non-HTTP scope through unchecked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from secondreader.service.auth import ApiKeyMiddleware, FailedAuthLimiter, TrustedProxies

KEY = "client-address-key"


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _call(app: ApiKeyMiddleware, peer: str, *, key: str = "wrong", forwarded: str | None = None,
          kind: str = "http") -> int | str:
    headers = [(b"authorization", f"Bearer {key}".encode())]
    if forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded.encode()))
    scope = {"type": kind, "path": "/v1/worklist", "headers": headers, "client": (peer, 40000)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"} if kind == "websocket" else {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    if kind == "websocket":
        return str(sent[0]["type"])
    return int(sent[0]["status"])


def _app(trusted: str = "") -> ApiKeyMiddleware:
    return ApiKeyMiddleware(_ok, keys=[KEY], limiter=FailedAuthLimiter(3, 60.0),
                            trusted_proxies=TrustedProxies(trusted))


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    app = _app()
    # a new forged address every time: the failures still count against the real peer
    statuses = [_call(app, "127.0.0.1", forwarded=f"10.0.0.{i}") for i in range(6)]
    assert statuses == [401, 401, 401, 429, 429, 429]
    # the addresses it named are not locked out
    assert _call(app, "10.0.0.1", key=KEY) == 200
    assert app.proxies.client({"client": ("127.0.0.1", 1), "headers": [(b"x-forwarded-for", b"6.6.6.6")]}) \
        == "127.0.0.1"


def test_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    proxies = TrustedProxies("10.1.0.0/16, 192.168.7.7")
    scope = {"client": ("10.1.2.3", 1), "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9, 192.168.7.7")]}
    assert proxies.client(scope) == "203.0.113.9"  # right-most hop that is not a trusted proxy
    assert proxies.client({**scope, "headers": [(b"x-forwarded-for", b"not-an-ip")]}) == "10.1.2.3"
    app = _app("10.1.0.0/16")
    assert [_call(app, "10.1.0.5", forwarded="203.0.113.9") for _ in range(4)] == [401, 401, 401, 429]
    assert _call(app, "10.1.0.5", forwarded="203.0.113.10", key=KEY) == 200  # another client behind the proxy
    with pytest.raises(ValueError, match="not an address or network"):
        TrustedProxies("proxy.example")


def test_a_websocket_needs_the_key() -> None:
    app = _app()
    assert _call(app, "127.0.0.1", kind="websocket") == "websocket.close"
    assert _call(app, "127.0.0.1", kind="websocket", key=KEY) == "websocket.accept"
