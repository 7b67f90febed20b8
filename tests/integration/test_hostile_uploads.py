"""Issue 30, findings 3 and 4: zip amplification and STOW-RS part floods are bounded.

Before the fix, a 15 MB upload holding a 2 GiB member at a ratio under 200 was read whole (and again
by the pipeline, and copied again by the quarantine): about 3 GB of RAM and 1.5 GiB of disk; and a
STOW-RS body of 50,000 tiny parts (9 MiB) took 238 s to answer 409, left 100,000 files in the
quarantine (its budget counted bytes only) and was parsed whole by the email parser (~10x its size).
"""

from __future__ import annotations

import io
import os
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from secondreader.dicom.io import InputProblem, iter_inputs, zip_budget
from secondreader.quarantine import Quarantine
from secondreader.service.auth import ApiKeyMiddleware
from secondreader.service.core import ScreeningService
from secondreader.service.http import MAX_STOW_PARTS, _dicom_part, _part_spans, build_app
from secondreader.store import Store

from ..factories import make_cxr_dataset, to_bytes

KEY = "uploads-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory,
         pneumonia_predictor) -> Iterator[tuple[TestClient, ScreeningService]]:  # type: ignore[no-untyped-def]
    home: Path = tmp_path_factory.mktemp("uploads-home")
    store = Store(f"sqlite:///{home / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=home, max_image_pixels=64_000_000, workers=1)
    app = ApiKeyMiddleware(build_app(lambda: core, max_upload_bytes=lambda: 64 * MIB), keys=[KEY])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, core
    core.close()


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


def test_stow_parts_are_split_without_copying_the_body() -> None:
    boundary = "b0undary"
    good = [to_bytes(make_cxr_dataset(256, 256)) for _ in range(3)]
    body = _stow_body([*good, b"\r\n--not-the-boundary\r\n" + b"y" * (4 * MIB)], boundary)
    tracemalloc.start()
    try:
        spans = _part_spans(f"multipart/related; boundary={boundary}", body, MAX_STOW_PARTS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB and len(spans) == 4
    assert [_dicom_part(body, span) for span in spans[:3]] == good
    with pytest.raises(Exception):  # noqa: B017,PT011 - the private _TooManyParts
        _part_spans(f"multipart/related; boundary={boundary}", _stow_body([b"z"] * 5, boundary), 4)


def test_the_quarantine_counts_files_as_well_as_bytes(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q", max_files=3)
    kept = [quarantine.keep(f"bad {i}".encode(), reason="not DICOM", channel="stow") for i in range(10)]
    assert sum(k is not None for k in kept) == 3
    assert len(list((tmp_path / "q").glob("*.bin"))) == 3
    assert quarantine.keep(b"bad 0", reason="not DICOM", channel="stow") is not None  # a resend still counts
