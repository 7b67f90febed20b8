"""Issue 30, findings 3 and 4: zip amplification and STOW-RS part floods are bounded.

Before the fix, a 15 MB upload holding a 2 GiB member at a ratio under 200 was read whole (and again
by the pipeline, and copied again by the quarantine): about 3 GB of RAM and 1.5 GiB of disk; and a
STOW-RS body of 50,000 tiny parts (9 MiB) took 238 s to answer 409, left 100,000 files in the
quarantine (its budget counted bytes only) and was parsed whole by the email parser (~10x its size).
"""

from __future__ import annotations

import base64
import io
import os
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from python_multipart.multipart import MultipartParser
from starlette.testclient import TestClient

from secondreader.dicom.io import InputProblem, iter_inputs, zip_budget
from secondreader.quarantine import Quarantine
from secondreader.service.core import ScreeningService
from secondreader.service.http import MAX_STOW_PARTS, StowParts

from ..factories import make_cxr_dataset, to_bytes
from .conftest import AUTH, service_client

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory,
         pneumonia_predictor) -> Iterator[tuple[TestClient, ScreeningService]]:  # type: ignore[no-untyped-def]
    with service_client(tmp_path_factory.mktemp("uploads-home"), [pneumonia_predictor], workers=1,
                        max_upload_bytes=64 * MIB) as pair:
        yield pair


def _amplifying_zip(member_bytes: int) -> bytes:
    """A zip of one member that deflates about 50x (under the per-member ratio limit of 200)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("big.dcm", "w",
                                                                                      force_zip64=True) as member:
        member.write(b"\0" * 128 + b"DICM")  # it looks like DICOM: the upload is taken and screened
        written = 132
        while written < member_bytes:
            block = os.urandom(256) + b"\0" * 16000
            member.write(block)
            written += len(block)
    return buffer.getvalue()


def test_a_zip_over_its_uncompressed_budget_is_refused_before_any_member_is_read(tmp_path: Path) -> None:
    data = _amplifying_zip(256 * MIB)
    path = tmp_path / "upload.zip"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as archive:
        (info,) = archive.infolist()
    assert info.file_size / info.compress_size < 200  # the old per-member ratio rule let it through
    assert info.file_size > zip_budget(len(data))
    tracemalloc.start()
    try:
        (problem,) = list(iter_inputs([path]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(problem, InputProblem) and "over its budget" in problem.reason
    assert peak < 4 * MIB, f"listing the zip allocated {peak / MIB:.1f} MiB"


def test_an_amplifying_upload_fails_and_is_quarantined_once(http: tuple[TestClient, ScreeningService]) -> None:
    client, core = http
    data = _amplifying_zip(256 * MIB)
    response = client.post("/screen?wait=60", content=data, headers={**AUTH, "Content-Type": "application/zip"})
    assert response.status_code == 200, response.text
    (study,) = response.json()["studies"]
    assert study["status"] == "failed" and "over its budget" in study["reason"]
    kept = [m for m in core.quarantine.entries() if m.get("kind") == "zip"]
    assert len(kept) == 1 and kept[0]["size"] == len(data)  # the archive itself, not an inflated member


def _stow_body(parts: list[bytes], boundary: str) -> bytes:
    chunks = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def test_a_stow_flood_of_parts_is_refused_before_any_is_read(http: tuple[TestClient, ScreeningService]) -> None:
    client, core = http
    before = len(list(core.quarantine.root.glob("*"))) if core.quarantine.root.is_dir() else 0
    boundary = uuid.uuid4().hex
    body = _stow_body([b"x" * 100] * 50_000, boundary)
    response = client.post("/dicomweb/studies", content=body, headers={
        **AUTH, "Content-Type": f'multipart/related; type="application/dicom"; boundary="{boundary}"'})
    assert response.status_code == 413 and str(MAX_STOW_PARTS) in response.json()["reason"]
    after = len(list(core.quarantine.root.glob("*"))) if core.quarantine.root.is_dir() else 0
    assert after - before == 0  # files left in the quarantine by the flood


def _stream(body: bytes, boundary: str, folder: Path, max_parts: int = MAX_STOW_PARTS) -> list[Path]:
    """Feed ``body`` to the STOW-RS part writer in 64 KiB pieces; the parts' files."""
    folder.mkdir(exist_ok=True)
    sink = StowParts(folder, max_parts)
    parser = MultipartParser(boundary.encode(), sink.callbacks(), max_header_count=32)
    try:
        for at in range(0, len(body), 65536):
            parser.write(body[at:at + 65536])
        parser.finalize()
    finally:
        sink.close()
    return sink.parts


def test_stow_parts_are_streamed_to_files_without_holding_a_part(tmp_path: Path) -> None:
    boundary = "b0undary"
    good = [to_bytes(make_cxr_dataset(256, 256)) for _ in range(3)]
    big = b"\r\n--not-the-boundary\r\n" + b"y" * (4 * MIB)
    body = _stow_body([*good, big], boundary)
    tracemalloc.start()
    try:
        parts = _stream(body, boundary, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB, f"{peak / MIB:.1f} MiB"  # a piece at a time, never a part
    assert [p.read_bytes() for p in parts] == [*good, big]
    # base64 parts (wrapped at 76 columns) are decoded on the way; other media types are passed over
    encoded = base64.encodebytes(good[0]).replace(b"\n", b"\r\n")
    mixed = (f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             .encode() + encoded + f"\r\n--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n{{}}\r\n"
             f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + good[1] + b"\r\n"
             + f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nunterminated".encode())
    assert [p.read_bytes() for p in _stream(mixed, boundary, tmp_path / "mixed")] == [good[0], good[1]]
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir()) == ["part-0001.dcm", "part-0003.dcm"]
    with pytest.raises(Exception):  # noqa: B017,PT011 - the private _TooManyParts
        _stream(_stow_body([b"z"] * 5, boundary), boundary, tmp_path / "five", max_parts=4)
    assert len(list((tmp_path / "five").iterdir())) == 4  # the caller removes its folder


def test_the_quarantine_counts_files_as_well_as_bytes(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q", max_files=3)
    kept = [quarantine.keep(f"bad {i}".encode(), reason="not DICOM", channel="stow") for i in range(10)]
    assert sum(k is not None for k in kept) == 3
    assert len(list((tmp_path / "q").glob("*.bin"))) == 3
    assert quarantine.keep(b"bad 0", reason="not DICOM", channel="stow") is not None  # a resend still counts
