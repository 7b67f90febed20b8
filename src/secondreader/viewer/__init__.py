"""The radiologist's web page (``/viewer/``): worklist, study view, verdicts.

The page is built from ``viewer/`` at the repository root (Cornerstone3D, bundled with npm and
vite: ``cd viewer && npm ci && npm run build``) into ``static/`` here, which ships inside the
package, so running it needs no Node. :func:`viewer_app` serves those files as an ASGI app that
the BentoML service mounts next to ``/v1``. The files hold no data: everything the page shows
comes from ``/v1`` with the API key the user enters (kept in the tab's sessionStorage and sent as
``Authorization: Bearer``), so the static files themselves are open (see ``service/auth.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.staticfiles import StaticFiles

__all__ = ["PATH", "STATIC_DIR", "viewer_app"]

PATH = "/viewer"
STATIC_DIR = Path(__file__).resolve().parent / "static"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# What the page may load: only itself (scripts, the decoder worker and its WebAssembly codecs,
# the API); images it builds from fetched bytes (blob:). No inline script, no third party.
_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
    "connect-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
]


class _ViewerApp:
    """Static files plus security headers; hashed assets are cached, the page is not."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files = StaticFiles(directory=directory, html=True, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if not (self.directory / "index.html").is_file():
            response = PlainTextResponse(
                "the viewer is not built: run `npm ci && npm run build` in viewer/", status_code=503)
            await response(scope, receive, send)
            return
        immutable = "/assets/" in scope.get("path", "")  # content-hashed file names

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers.extend(_HEADERS)
                headers.append((b"cache-control",
                                b"public, max-age=31536000, immutable" if immutable else b"no-cache"))
                message["headers"] = headers
            await send(message)

        await self.files(scope, receive, send_with_headers)


def viewer_app(directory: Path | None = None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app serving the built viewer (``index.html`` at its root)."""
    return _ViewerApp(directory or STATIC_DIR)
