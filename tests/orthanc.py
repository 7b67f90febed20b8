"""A throwaway Orthanc for integration tests (reusable: the audit issue needs it for DICOMweb).

Orthanc 1.10 listens on all interfaces, so tests may only start it inside a private network
namespace (``unshare -n``): :func:`in_private_network_namespace` checks that only loopback exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from .readiness import free_port


def in_private_network_namespace() -> bool:
    """Only loopback in this network namespace (``/proc/net/dev`` is per namespace; sysfs is not)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    interfaces = {line.split(":", 1)[0].strip() for line in lines if ":" in line}
    return interfaces <= {"lo"}


class Orthanc:
    def __init__(self, folder: Path, *, modalities: dict[str, list[Any]] | None = None,
                 lua_scripts: list[Path] | None = None, stable_age: int = 1, dicomweb: bool = False) -> None:
        self.folder = folder
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        config: dict[str, Any] = {
            "Name": "test-pacs", "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomModalities": modalities or {}, "StableAge": stable_age,
            "LuaScripts": [str(p) for p in (lua_scripts or [])], "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True, "Plugins": [],
        }
        if dicomweb:
            config["Plugins"] = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([shutil.which("Orthanc") or "Orthanc", str(folder / "orthanc.json")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/system", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not start: " + (folder / "orthanc.log").read_text()[-2000:])

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.base}{path}", timeout=30)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.content

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
