"""API keys (``Authorization: Bearer KEY``) on every route but health and metrics, with a limit on
failed attempts per client address.

An ASGI middleware, so it covers BentoML's own routes and the mounted apps alike, and refuses
before the request body is read. Keys are compared in constant time (every key is compared, and
``hmac.compare_digest`` does not stop at the first differing byte). A client address that failed
``max_failures`` times within ``window_seconds`` gets 429 with ``Retry-After`` for every request
until the window has passed, whatever key it presents then, so a key cannot be guessed by trying.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["OPEN_PATHS", "OPEN_PREFIXES", "ApiKeyMiddleware", "FailedAuthLimiter", "TrustedProxies", "bearer_token",
           "parse_keys"]

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
# The viewer's static page and bundle hold no data (it asks /v1 with the key the user enters).
OPEN_PREFIXES = ("/viewer/",)

ASGIApp = Callable[..., Any]


def parse_keys(raw: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (raw or "").split(",") if k.strip())


def bearer_token(header: bytes | str | None) -> str:
    """The key in an ``Authorization: Bearer KEY`` header (the scheme case-insensitive, RFC 6750), or
    "" when the header is absent, empty or of another scheme."""
    raw = header.decode("latin-1") if isinstance(header, bytes) else (header or "")
    scheme, _, token = raw.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class TrustedProxies:
    """The reverse proxies whose ``X-Forwarded-For`` is believed (``SECONDREADER_TRUSTED_PROXIES``:
    addresses or networks, comma-separated; none by default).

    :meth:`client` is the address a request is limited and logged by: the connecting peer, unless
    that peer is a trusted proxy; then the right-most address of ``X-Forwarded-For`` that is not a
    trusted proxy itself (the left-most entries are whatever the client wrote)."""

    def __init__(self, raw: str | None = None) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in (raw or "").split(","):
            if item.strip():
                try:
                    self.networks.append(ipaddress.ip_network(item.strip(), strict=False))
                except ValueError:
                    raise ValueError("SECONDREADER_TRUSTED_PROXIES holds an entry that is not an address or "
                                     "network") from None

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client(self, scope: dict[str, Any]) -> str:
        peer = str((scope.get("client") or ("unknown", 0))[0] or "unknown")
        if not self.networks or not self.trusts(peer):
            return peer
        forwarded = b",".join(v for k, v in scope.get("headers") or [] if k == b"x-forwarded-for")
        for hop in reversed(forwarded.decode("latin-1").split(",")):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a malformed chain: the proxy's own address, not a name a client chose
            if not self.trusts(hop):
                return hop
        return peer


class FailedAuthLimiter:
    """Failed attempts per client address in a sliding window (bounded memory).

    Parameters
    ----------
    max_failures
        Failures within ``window_seconds`` after which the address is refused.
    window_seconds
        The sliding window, and how long an address stays refused after its last failure.
    max_clients
        Addresses remembered at most; the least recently seen are forgotten first.
    clock
        Monotonic seconds (injectable for tests).
    """

    def __init__(self, max_failures: int = 10, window_seconds: float = 60.0, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, not {max_failures}")
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, not {window_seconds}")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window_seconds:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it is not refused."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if times is None or len(times) < self.max_failures:
                return 0.0
            return max(0.0, times[-1] + self.window_seconds - now)

    def failed(self, client: str) -> None:
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if times is None:
                times = deque(maxlen=self.max_failures)
                self._failures[client] = times
            times.append(now)
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)


def _json(status: int, payload: dict[str, str], extra: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], bytes]:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}, body


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[str] | Callable[[], Iterable[str]], *,
                 limiter: FailedAuthLimiter | None = None, trusted_proxies: TrustedProxies | None = None) -> None:
        self.app = app
        self._keys = keys
        self.limiter = limiter if limiter is not None else FailedAuthLimiter()
        self.proxies = trusted_proxies if trusted_proxies is not None else TrustedProxies()

    def _valid(self, presented: bytes) -> bool:
        keys = self._keys() if callable(self._keys) else self._keys
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(presented, key.encode())
        return ok

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        kind = scope["type"]
        if kind not in ("http", "websocket") or (
                kind == "http" and (path in OPEN_PATHS or path == "/viewer" or path.startswith(OPEN_PREFIXES))):
            await self.app(scope, receive, send)  # lifespan; the open HTTP routes (no WebSocket is open)
            return
        client = self.proxies.client(scope)
        wait = self.limiter.retry_after(client)
        if wait > 0:
            await self._refuse(kind, send, 429, {"error": "too many requests", "reason": "too many failed API-key "
                                                 "attempts from this address; try again later"},
                               [(b"retry-after", str(int(wait) + 1).encode())])
            return
        token = bearer_token(dict(scope.get("headers") or []).get(b"authorization"))
        if token and self._valid(token.encode("latin-1")):
            await self.app(scope, receive, send)
            return
        self.limiter.failed(client)
        if self.limiter.retry_after(client) > 0:
            logger.warning("API key: too many failed attempts from one client address; refusing it for %.0f s",
                           self.limiter.window_seconds)
        await self._refuse(kind, send, 401, {"error": "unauthorized", "reason": "a valid API key is required "
                                             "(Authorization: Bearer KEY)"}, [(b"www-authenticate", b"Bearer")])

    @staticmethod
    async def _refuse(kind: str, send: Any, status: int, payload: dict[str, str],
                      extra: list[tuple[bytes, bytes]]) -> None:
        if kind == "websocket":  # closed before it is accepted: the server answers the handshake with 403
            await send({"type": "websocket.close", "code": 1008})
            return
        start, body = _json(status, payload, extra)
        await send(start)
        await send({"type": "http.response.body", "body": body})
