"""OHIF, the open viewer a site is likeliest to put in front of its PACS, served for a browser test.

The npm package ``@ohif/app`` ships a built viewer in ``dist/`` (no build step): ``scripts/fetch-ohif.sh``
unpacks a pinned version under ``.cache/ohif/`` (``.ci/run`` calls it; ``SECONDREADER_OHIF_DIST`` names
another ``dist``). :class:`OhifServer` serves that folder on loopback with a configuration whose one
data source is ``/dicom-web`` on the same origin, which it forwards to a test Orthanc's DICOMweb
plugin: one origin, as a site's reverse proxy would give, so no CORS set-up is needed.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

__all__ = ["OHIF_VERSION", "OhifServer", "ohif_dist"]

#: The pinned viewer release (``scripts/fetch-ohif.sh`` fetches the same one).
OHIF_VERSION = "3.13.2"
_REPO = Path(__file__).resolve().parents[1]


def ohif_dist() -> Path | None:
    """The built viewer's folder, or None when it has not been fetched."""
    named = os.environ.get("SECONDREADER_OHIF_DIST")
    folder = Path(named) if named else _REPO / ".cache" / "ohif" / OHIF_VERSION / "package" / "dist"
    return folder if (folder / "index.html").is_file() else None


def _config() -> str:
    """The viewer's ``app-config.js``: one DICOMweb data source on this origin (Orthanc's plugin
    behind :class:`OhifServer`), no investigational-use dialog, nothing fetched from elsewhere."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "test Orthanc", "name": "orthanc",
            "wadoUriRoot": "/dicom-web", "qidoRoot": "/dicom-web", "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False, "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True, "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/", "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": True, "maxNumberOfWebWorkers": 2, "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False, "showLoadingIndicator": True, "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"}, "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc", "dataSources": [source],
    }
    return "window.config = " + json.dumps(config) + ";\n"


class _Handler(BaseHTTPRequestHandler):
    dist: Path
    upstream: str

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        return

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path.startswith("/dicom-web/"):
            self._forward()
            return
        if path == "/app-config.js":
            self._send(200, _config().encode(), "application/javascript")
            return
        target = (self.dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.dist) or not target.is_file():
            target = self.dist / "index.html"  # a single-page app: every route is index.html
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            kind = "application/wasm"
        self._send(200, target.read_bytes(), kind)

    def _forward(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
        try:
            reply = httpx.get(self.upstream + self.path, headers=headers, timeout=60)
        except httpx.HTTPError:
            self._send(502, b"Orthanc did not answer", "text/plain")
            return
        self._send(reply.status_code, reply.content, reply.headers.get("content-type", "application/octet-stream"))

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OhifServer:
    """The viewer on ``http://127.0.0.1:PORT``, its ``/dicom-web`` forwarded to ``orthanc_base``."""

    def __init__(self, dist: Path, orthanc_base: str) -> None:
        handler = type("Handler", (_Handler,), {"dist": dist.resolve(), "upstream": orthanc_base.rstrip("/")})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def viewer_url(self, study_uid: str, **params: str) -> str:
        query = "&".join([f"StudyInstanceUIDs={study_uid}", *(f"{k}={v}" for k, v in params.items())])
        return f"{self.base}/viewer?{query}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
