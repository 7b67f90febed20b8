"""Issue 30's last upload gaps and issue 31's "header once, pixels once", measured on the service in
a process of its own (``upload_server``) over real HTTP: the peak RSS one request adds to that
process (its VmHWM after resetting it through ``/proc/<pid>/clear_refs``, over its RSS then), and the
files it leaves behind.

Before the change a zip member was read whole into memory (and again by the pipeline, and again by
the quarantine) and a STOW-RS body was read whole, then each part copied out of it: a zip holding a
304 MiB member added 636 MiB to the process's peak RSS, one whose header declares 200 MiB 620 MiB, a
200 MiB STOW-RS request 388 MiB. Now members are unpacked in chunks into a scratch file, counted
against the upload's budget as they come, and read from there (the header once, the pixels once);
STOW-RS parts are streamed to files of their own as they arrive: 7.4, 0.2 and 3.1 MiB
(``SECONDREADER_UPLOAD_FIGURES=<file>`` writes the figures).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from secondreader.dicom.io import zip_budget

from ..conftest import CANARY_ID, CANARY_NAME, ROOT
from ..factories import make_cxr_dataset, to_bytes
from ..readiness import free_port

pytestmark = [pytest.mark.weights, pytest.mark.slow]

KEY = "streamed-uploads-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB = 1024 * 1024
#: What one request may add to the service's peak RSS (measured: 0.2-7.4 MiB with the chunked paths;
#: 388-636 MiB before them).
RSS_BOUND = 32 * MIB
STUDY = "1.2.826.0.1.3680043.8.498.31313131313131"
#: What each request added to the peak RSS, in MiB (written to $SECONDREADER_UPLOAD_FIGURES if set).
FIGURES: dict[str, float] = {}


class Server:
    def __init__(self, base: str, home: Path, log: Path, proc: subprocess.Popen[bytes]) -> None:
        self.base, self.home, self.log, self.proc = base, home, log, proc

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {key} in /proc status")

    def reset_peak(self) -> int:
        """Reset the process's peak RSS to its RSS now; returns that."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return self._status("VmHWM")

    def peak(self) -> int:
        return self._status("VmHWM")

    def leftovers(self) -> list[str]:
        """Files under the home that are neither kept on purpose (spool, quarantine, outputs) nor
        the service's database and log: scratch copies, temporary parts."""
        kept = ("spool", "quarantine", "artifacts")
        return sorted(str(p.relative_to(self.home)) for p in self.home.rglob("*")
                      if p.is_file() and p.relative_to(self.home).parts[0] not in kept
                      and not p.name.startswith("sr.db") and p.name != "server.log")

    def spooled_instances(self) -> dict[str, int]:
        root = self.home / "spool" / "inbound"
        return {p.name: p.stat().st_size for p in root.rglob("*.dcm")} if root.is_dir() else {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("streamed-home")
    (home / "tmp").mkdir()
    log = home / "server.log"
    port = free_port()
    env = {**os.environ, "TMPDIR": str(home / "tmp"), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.integration.upload_server", "--home", str(home),
                                 "--port", str(port), "--key", KEY, "--max-upload-mib", "256"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the upload server exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/jobs/{'0' * 32}", headers=AUTH, timeout=2).status_code == 404:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the upload server did not start within 180 s")
            time.sleep(0.5)
        yield Server(base, home, log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- inputs ------------------------------------------------------------------------------------
def _header(rows: int, cols: int, frames: int, bits: int, *, sop_uid: str | None = None) -> tuple[bytes, int]:
    """A Part 10 header (canary patient) up to and including the Pixel Data element's own header,
    and the length of the pixel data that must follow."""
    ds = make_cxr_dataset(16, 16, study_uid=STUDY, sop_uid=sop_uid)
    del ds.PixelData
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    if frames > 1:
        ds.NumberOfFrames = frames
    length = rows * cols * frames * bits // 8
    element = b"\xe0\x7f\x10\x00" + (b"OW" if bits == 16 else b"OB") + b"\0\0" + struct.pack("<I", length)
    return to_bytes(ds) + element, length


def _pixel_chunks(length: int, noise: int) -> Iterator[bytes]:
    """``length`` bytes in 1 MiB chunks that deflate about 16384 / (noise + 40) times."""
    block = 16384
    chunk = b"".join(os.urandom(noise) + b"\0" * (block - noise) for _ in range(MIB // block))
    sent = 0
    while sent < length:
        piece = chunk[:min(MIB, length - sent)]
        sent += len(piece)
        yield piece


def _zip_of_one(path: Path, header: bytes, length: int, noise: int) -> int:
    """Write a zip holding one member (``header`` then ``length`` pixel bytes); returns the member's size."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("big.dcm", "w") as member:
        member.write(header)
        for chunk in _pixel_chunks(length, noise):
            member.write(chunk)
    return len(header) + length


def _lie_about_size(path: Path, declared: int) -> None:
    """Make the zip's headers (local and central) declare ``declared`` uncompressed bytes."""
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 24, declared)
    path.write_bytes(bytes(data))


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            yield chunk


def _post_zip(server: Server, path: Path) -> tuple[httpx.Response, int]:
    """POST the zip to /screen, streamed by the client; returns the answer and the RSS it added."""
    baseline = server.reset_peak()
    response = httpx.post(f"{server.base}/screen?wait=300", content=_file_chunks(path), timeout=600,
                          headers={**AUTH, "Content-Type": "application/zip"})
    return response, server.peak() - baseline


def _figure(grown: int) -> None:
    FIGURES[os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]] = round(grown / MIB, 1)


def _no_patient_data(text: str) -> None:
    assert CANARY_NAME not in text and "CANARY" not in text and CANARY_ID not in text


# -- zips --------------------------------------------------------------------------------------
def test_a_big_zip_member_is_unpacked_in_chunks_read_once_and_kept_without_a_copy(server: Server,
                                                                                  tmp_path: Path) -> None:
    # 2048 x 2048 x 38 frames of 16 bits: 304 MiB, over the pixel limit (refused before its pixels are read)
    header, length = _header(2048, 2048, 38, 16)
    path = tmp_path / "big.zip"
    size = _zip_of_one(path, header, length, noise=512)
    assert size <= zip_budget(path.stat().st_size) and size > 300 * MIB  # within the archive's budget
    response, grown = _post_zip(server, path)
    assert response.status_code == 200, response.text
    _no_patient_data(response.text)
    (study,) = response.json()["studies"]
    assert study["status"] == "failed" and "too large to decode" in study["reason"], study
    _figure(grown)
    assert grown < RSS_BOUND, f"the request added {grown / MIB:.0f} MiB to the service's peak RSS"
    kept = [m for m in (server.home / "quarantine").glob("*.json")
            if f'"size": {size}' in m.read_text() and '"zip member"' in m.read_text()]
    assert len(kept) == 1  # the member itself, kept once
    assert server.leftovers() == []


def test_a_zip_header_lying_about_a_member_size_is_stopped_at_the_declared_size(server: Server,
                                                                                tmp_path: Path) -> None:
    header, length = _header(2048, 2048, 38, 16)
    path = tmp_path / "lying.zip"
    real = _zip_of_one(path, header, length, noise=512)
    declared = 200 * MIB
    _lie_about_size(path, declared)
    with zipfile.ZipFile(path) as archive:
        (info,) = archive.infolist()
    assert info.file_size == declared < real and declared <= zip_budget(path.stat().st_size)
    response, grown = _post_zip(server, path)
    assert response.status_code == 200, response.text
    _no_patient_data(response.text)
    (study,) = response.json()["studies"]
    assert study["status"] == "failed" and "zip member is corrupt" in study["reason"], study
    _figure(grown)
    assert grown < RSS_BOUND, f"the request added {grown / MIB:.0f} MiB to the service's peak RSS"
    assert server.leftovers() == []


def test_an_upload_unpacking_past_its_budget_is_stopped_by_the_running_count(server: Server,
                                                                             tmp_path: Path) -> None:
    # three zips, each within its own budget (and its per-member ratio), together past the upload's:
    # 8192 x 8192 at 8 bits is 64 MiB, over the pixel limit
    archives = []
    for index in range(3):
        header, length = _header(8192, 8192, 1, 8, sop_uid=f"1.2.826.0.1.3680043.8.498.3131{index}")
        path = tmp_path / f"part{index}.zip"
        member = _zip_of_one(path, header, length, noise=128)
        assert member <= zip_budget(path.stat().st_size)
        archives.append(path)
    budget = zip_budget(sum(p.stat().st_size for p in archives))
    fitting = budget // member
    assert fitting < 3
    baseline = server.reset_peak()
    files = [("file", (p.name, p.read_bytes(), "application/zip")) for p in archives]
    response = httpx.post(f"{server.base}/screen?wait=300", files=files, headers=AUTH, timeout=600)
    grown = server.peak() - baseline
    assert response.status_code == 200, response.text
    _no_patient_data(response.text)
    studies = response.json()["studies"]
    refused = [s for s in studies if "unpacks past its budget of" in (s.get("reason") or "")]
    assert len(refused) == 3 - fitting, studies
    assert f"budget of {budget / MIB:.0f} MiB" in refused[0]["reason"]
    _figure(grown)
    assert grown < RSS_BOUND, f"the request added {grown / MIB:.0f} MiB to the service's peak RSS"
    assert server.leftovers() == []


# -- STOW-RS -----------------------------------------------------------------------------------
def test_a_big_stow_request_is_streamed_part_by_part_into_the_spool(server: Server) -> None:
    boundary = uuid.uuid4().hex
    parts = [_header(5120, 5120, 1, 16, sop_uid=f"1.2.826.0.1.3680043.8.498.3132{i}") for i in range(4)]
    digests: list[str] = []

    def body() -> Iterator[bytes]:
        for header, length in parts:
            digest = hashlib.sha256(header)
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + header
            for chunk in _pixel_chunks(length, noise=512):
                digest.update(chunk)
                yield chunk
            digests.append(digest.hexdigest())
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    total = sum(len(h) + n for h, n in parts)
    assert total > 200 * MIB
    before = server.spooled_instances()
    baseline = server.reset_peak()
    response = httpx.post(f"{server.base}/dicomweb/studies", content=body(), timeout=600, headers={
        **AUTH, "Content-Type": f'multipart/related; type="application/dicom"; boundary="{boundary}"'})
    grown = server.peak() - baseline
    assert response.status_code == 200, response.text
    _no_patient_data(response.text)
    assert len(response.json()["00081199"]["Value"]) == 4
    _figure(grown)
    assert grown < RSS_BOUND, f"the request added {grown / MIB:.0f} MiB to the service's peak RSS"
    spooled = {name: size for name, size in server.spooled_instances().items() if name not in before}
    assert sorted(spooled.values()) == sorted(len(h) + n for h, n in parts)
    for path in (server.home / "spool" / "inbound").rglob("*.dcm"):
        if path.name in spooled:
            with open(path, "rb") as fh:
                assert hashlib.file_digest(fh, "sha256").hexdigest() in digests
    assert server.leftovers() == []


def test_a_stow_request_of_1001_parts_is_refused_and_leaves_no_part_behind(server: Server) -> None:
    boundary = uuid.uuid4().hex
    part = to_bytes(make_cxr_dataset(8, 8, study_uid=STUDY))
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
                    for _ in range(1_001)) + f"--{boundary}--\r\n".encode()
    spooled = server.spooled_instances()
    quarantined = sorted((server.home / "quarantine").glob("*")) if (server.home / "quarantine").is_dir() else []
    response = httpx.post(f"{server.base}/dicomweb/studies", content=io.BytesIO(body).getvalue(), timeout=120,
                          headers={**AUTH, "Content-Type": f"multipart/related; type=\"application/dicom\"; "
                                                           f"boundary={boundary}"})
    assert response.status_code == 413 and "1000 parts" in response.json()["reason"], response.text
    assert server.spooled_instances() == spooled
    assert (sorted((server.home / "quarantine").glob("*")) if (server.home / "quarantine").is_dir() else []) \
        == quarantined
    assert server.leftovers() == []


def test_no_patient_data_reached_the_service_log(server: Server) -> None:
    if os.environ.get("SECONDREADER_UPLOAD_FIGURES"):
        Path(os.environ["SECONDREADER_UPLOAD_FIGURES"]).write_text(json.dumps(FIGURES, indent=1) + "\n")
    text = server.log.read_text(errors="replace")
    _no_patient_data(text)
    assert "Traceback" not in text, text[-3000:]
