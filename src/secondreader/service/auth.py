"""API keys (``Authorization: Bearer KEY``) on every route but health and metrics.

An ASGI middleware, so it covers BentoML's own routes and the mounted apps alike, and refuses
before the request body is read. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["OPEN_PATHS", "ApiKeyMiddleware", "parse_keys"]

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})

ASGIApp = Callable[..., Any]


def parse_keys(raw: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (raw or "").split(",") if k.strip())


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[str] | Callable[[], Iterable[str]]) -> None:
        self.app = app
        self._keys = keys

    def _valid(self, presented: bytes) -> bool:
        keys = self._keys() if callable(self._keys) else self._keys
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(presented, key.encode())
        return ok

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and token and self._valid(token.strip()):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized", "reason": "a valid API key is required "
                           "(Authorization: Bearer KEY)"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
