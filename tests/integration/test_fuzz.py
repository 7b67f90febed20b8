"""Bad input through every entry point: the CLI, HTTP (upload and STOW-RS) and the DICOM receiver.

Inputs: every file of the shared corpus that is broken or not DICOM, a fixed set of hostile files
(lying lengths, transfer syntaxes and sizes, Bits Stored > Bits Allocated, deeply nested
sequences, zip bombs, zip entries with ``..`` or absolute paths, non-DICOM files) and hypothesis
mutations (truncation, flipped bytes) of a real-looking chest radiograph. Every input must end as a
result or a 4xx / DIMSE failure with a reason; the process stays up; memory stays bounded; nothing is
written outside the state folder (and ``--out``); the original bytes of every failed input are in
the quarantine with the reason, and neither reasons nor sidecars carry the canary patient name.
Bounded time: a few hundred hypothesis examples in all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from starlette.testclient import TestClient

from secondreader.dicom.io import InputFile, iter_inputs
from secondreader.dicom.scp import start_receiver
from secondreader.pipeline import ScreeningOptions, screen_inputs
from secondreader.quarantine import Quarantine
from secondreader.service.auth import ApiKeyMiddleware
from secondreader.service.core import ScreeningService
from secondreader.service.http import build_app
from secondreader.store import Store

from ..conftest import CANARY_ID, CANARY_NAME, SHARED_DATA, require
from ..contract import assert_study_result
from ..factories import make_cxr_dataset, to_bytes

pytestmark = [pytest.mark.weights, pytest.mark.slow]

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CANARY = ("CANARY", CANARY_ID)
GOOD = to_bytes(make_cxr_dataset(256, 256))
GOOD_J2K = to_bytes(make_cxr_dataset(256, 256, transfer_syntax=JPEG2000Lossless))


# -- hostile inputs ----------------------------------------------------------------------------
def _with(**changes: object) -> bytes:
    ds = make_cxr_dataset(256, 256)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return to_bytes(ds)


def _lying_transfer_syntax(uid: str) -> bytes:
    ds = make_cxr_dataset(256, 256)
    data = bytearray(to_bytes(ds))
    old = str(ds.file_meta.TransferSyntaxUID).encode()
    at = data.index(old)
    new = uid.encode().ljust(len(old), b"\0") if len(uid) <= len(old) else uid.encode()[: len(old)]
    data[at:at + len(old)] = new
    return bytes(data)


def _fresh(**kwargs: object) -> bytes:
    """A valid chest radiograph with UIDs of its own (hostile files must not be each other's duplicates)."""
    return to_bytes(make_cxr_dataset(256, 256, **kwargs))  # type: ignore[arg-type]


def _lying_length(tag: tuple[int, int], length: int) -> bytes:
    """A fresh file with the 4-byte length of the element ``tag`` (explicit VR, 2-byte length VRs widened
    by rewriting the 2-byte field) replaced by ``length``."""
    data = bytearray(_fresh())
    at = data.index(struct.pack("<HH", *tag), 132)
    vr = bytes(data[at + 4:at + 6])
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"OD", b"OL", b"UC", b"UR"):
        data[at + 8:at + 12] = struct.pack("<I", length)
    else:
        data[at + 6:at + 8] = struct.pack("<H", length & 0xFFFF)
    return bytes(data)


def _deeply_nested(depth: int) -> bytes:
    sq_open = struct.pack("<HH", 0xFFFA, 0xFFFA) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    item_open = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return _fresh() + (sq_open + item_open) * depth + closing * depth


def _zip(members: dict[str, bytes], *, level: int = 6) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _zip_bomb(size: int = 200 * 1024**2) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("bomb.dcm", "w", force_zip64=True) as member:
            block = b"\0" * (1024**2)
            for _ in range(size // len(block)):
                member.write(block)
    return buffer.getvalue()


def _lying_zip() -> bytes:
    """A zip whose headers claim a 300-byte member that really inflates to 50 MiB."""
    data = bytearray(_zip({"small.dcm": b"\0" * (50 * 1024**2)}, level=9))
    real = struct.pack("<I", 50 * 1024**2)
    for at in [i for i in range(len(data) - 3) if data[i:i + 4] == real]:
        data[at:at + 4] = struct.pack("<I", 300)
    return bytes(data)


def hostile_inputs() -> dict[str, bytes]:
    """A fixed set of hostile files by name (each name says what it is)."""
    return {
        "empty.dcm": b"",
        "text.dcm": f"{CANARY_NAME} {CANARY_ID} is not an image".encode(),
        "png.dcm": b"\x89PNG\r\n\x1a\n" + os.urandom(64),
        "random.bin": os.urandom(4096),
        "preamble-only.dcm": b"\0" * 128 + b"DICM",
        "truncated-header.dcm": _fresh()[:400],
        "truncated-pixels.dcm": _fresh()[:-5000],
        "truncated-j2k.dcm": _fresh(transfer_syntax=JPEG2000Lossless)[:-2000],
        "ts-claims-jpeg2000.dcm": _lying_transfer_syntax(str(JPEG2000Lossless)),
        "ts-claims-big-endian.dcm": _lying_transfer_syntax("1.2.840.10008.1.2.2"),
        "ts-unknown.dcm": _lying_transfer_syntax("1.2.3.4.5.6.7.8.9"),
        "length-huge-pixeldata.dcm": _lying_length((0x7FE0, 0x0010), 0xFFFFFFF0),
        "length-huge-patientname.dcm": _lying_length((0x0010, 0x0010), 0xFFFF),
        "rows-cols-huge.dcm": _with(Rows=65535, Columns=65535),
        "frames-huge.dcm": _with(NumberOfFrames=2_000_000_000),
        "frames-negative.dcm": _with(NumberOfFrames=-5),
        "bits-stored-over-allocated.dcm": _with(BitsStored=24, HighBit=23),
        "bits-allocated-odd.dcm": _with(BitsAllocated=12),
        "rows-zero.dcm": _with(Rows=0),
        "nested-800.dcm": _deeply_nested(800),
        "zip-bomb.zip": _zip_bomb(),
        "zip-lying-size.zip": _lying_zip(),
        "zip-traversal.zip": _zip({"../../../escape.dcm": _fresh(),
                                   "/tmp/secondreader-absolute.dcm": _fresh(transfer_syntax=JPEG2000Lossless),
                                   "..\\..\\win.dcm": b"not dicom"}),
        "zip-corrupt.zip": _zip({"a.dcm": _fresh()})[:200],
    }


#: Lies a reader may see through: Pixel Data whose length runs past the end of the file (it is read
#: to the end, which holds exactly the pixels the header describes).
READABLE_DESPITE_LIES = {"length-huge-pixeldata.dcm"}


def shared_broken_files() -> list[Path]:
    """The shared corpus' deliberately broken files and its non-DICOM files."""
    if not SHARED_DATA.is_dir():
        return []
    names = {"966.dcm", "JPEGLosslessP14SV1_1s_1f_u_16_16.dcm", "README.md", "LICENSE", "00000001_000.png"}
    return sorted(p for p in (SHARED_DATA / "dicom").rglob("*") if p.is_file() and p.name in names) + sorted(
        (SHARED_DATA / "cxr").glob("*.png"))


# -- invariants --------------------------------------------------------------------------------
def _no_canary(text: str) -> None:
    for marker in CANARY:
        assert marker not in text, f"patient data leaked: {text[:300]!r}"


def _check_result(result: dict) -> None:  # type: ignore[type-arg]
    assert_study_result(result)
    _no_canary(json.dumps(result))
    for inst in result["instances"]:
        if inst["status"] in ("failed", "ineligible"):
            assert inst["reason"], inst


def _quarantined(root: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    out = {}
    for sidecar in root.glob("*.json"):
        text = sidecar.read_text()
        _no_canary(text)
        meta = json.loads(text)
        assert (root / f"{meta['sha256']}.bin").is_file()
        assert hashlib.sha256((root / f"{meta['sha256']}.bin").read_bytes()).hexdigest() == meta["sha256"]
        assert set(meta) == {"sha256", "size", "reason", "channel", "kind", "first_seen", "last_seen", "count"}
        out[meta["sha256"]] = meta
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def hostile() -> dict[str, bytes]:
    return hostile_inputs()


@pytest.fixture(autouse=True)
def _no_escape() -> Iterator[None]:
    """No test here may create the files that hostile zip entries name."""
    targets = [Path("/tmp/secondreader-absolute.dcm"), Path("escape.dcm").resolve(), Path("/escape.dcm")]
    yield
    for target in targets:
        assert not target.exists(), f"a zip entry escaped to {target}"


# -- the pipeline (what the CLI, the jobs and the audit share) ---------------------------------
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(["plain", "j2k"]), cut=st.integers(0, len(GOOD)),
       flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=6))
def test_mutations_through_the_pipeline_end_in_results_and_failures_are_quarantined(
        tmp_path_factory: pytest.TempPathFactory, pneumonia_predictor, base: str, cut: int,  # type: ignore[no-untyped-def]
        flips: list[tuple[int, int]]) -> None:
    data = bytearray(GOOD if base == "plain" else GOOD_J2K)
    for position, xor in flips:
        if position < len(data):
            data[position] ^= xor
    data = data[: min(cut, len(data))] if cut < len(data) - 1 else data
    folder = tmp_path_factory.mktemp("mut")
    path = folder / "m.dcm"
    path.write_bytes(bytes(data))
    quarantine = Quarantine(folder / "quarantine")
    options = ScreeningOptions(predictors=[pneumonia_predictor], quarantine=quarantine, explain=False)
    (result,) = [r.to_json() for r in screen_inputs([InputFile("m.dcm", path, size=len(data))], options)]
    _check_result(result)
    (inst,) = result["instances"]
    kept = _quarantined(folder / "quarantine")
    if inst["status"] == "failed":
        assert kept[_sha(bytes(data))]["reason"] == inst["reason"]
    else:
        assert not kept


def test_hostile_files_through_the_pipeline(tmp_path: Path, pneumonia_predictor, hostile: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for name, data in hostile.items():
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    quarantine = Quarantine(tmp_path / "quarantine")
    options = ScreeningOptions(predictors=[pneumonia_predictor], quarantine=quarantine, explain=False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = [r.to_json() for r in screen_inputs(iter_inputs([tmp_path / "in"]), options)]
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 600, f"peak memory grew by {grown_mib:.0f} MiB on hostile input"
    by_source = {}
    for result in results:
        _check_result(result)
        for inst in result["instances"]:
            by_source.setdefault(inst["source"], []).append(inst)
    kept = _quarantined(tmp_path / "quarantine")
    reasons = {n: [i["reason"] for i in by_source.get(n, [])] for n in hostile}
    # Each hostile file has its outcome, by name (zip members by their base names).
    for name in hostile:
        if name.endswith(".zip") and name != "zip-corrupt.zip":
            continue
        assert by_source.get(name), f"{name}: no result"
        if name in READABLE_DESPITE_LIES:
            continue
        assert all(i["status"] in ("failed", "ineligible") for i in by_source[name]), (name, by_source[name])
    assert "zip bomb" in by_source["bomb.dcm"][0]["reason"]
    assert by_source["escape.dcm"][0]["status"] == "screened"  # read in memory, never extracted
    assert "too deeply" in reasons["nested-800.dcm"][0]
    assert "too large to decode" in reasons["rows-cols-huge.dcm"][0]
    assert "too large to decode" in reasons["frames-huge.dcm"][0]
    assert "Bits Stored 24" in reasons["bits-stored-over-allocated.dcm"][0]
    # Every failed original is in the quarantine with its reason (zip members and problems too).
    for name, data in hostile.items():
        failed = [i for i in by_source.get(name, []) if i["status"] == "failed"]
        if failed and not name.endswith(".zip"):
            assert kept[_sha(data)]["reason"] == failed[0]["reason"], name
    assert kept[_sha(hostile["zip-bomb.zip"])]["kind"] == "zip"
    assert "zip archive" in str(kept[_sha(hostile["zip-corrupt.zip"])]["reason"])
    assert "corrupt" in str(kept[_sha(hostile["zip-lying-size.zip"])]["reason"])


# -- the CLI as a user runs it -----------------------------------------------------------------
def test_cli_over_hostile_and_broken_files(tmp_path: Path, hostile: dict[str, bytes]) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, data in hostile.items():
        (inputs / name).write_bytes(data)
    broken = shared_broken_files()
    require(bool(broken), "../shared/data is absent: the corpus' broken files are part of this test")
    for path in broken:
        (inputs / f"shared-{path.name}").write_bytes(path.read_bytes())
    home, out, work = tmp_path / "home", tmp_path / "out", tmp_path / "cwd"
    work.mkdir()
    before = _tree(tmp_path)
    env = {**os.environ, "SECONDREADER_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "secondreader.cli", "screen", str(inputs), "--format", "json",
                           "--out", str(out)], cwd=work, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _no_canary(proc.stderr)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    sources = set()
    for result in results:
        _check_result(result)
        sources.update(i["source"] for i in result["instances"])
    expected = {n for n in hostile if not n.endswith(".zip") or n == "zip-corrupt.zip"} | {
        f"shared-{p.name}" for p in broken}
    assert expected <= sources, expected - sources
    kept = _quarantined(home / "quarantine")
    assert {m["channel"] for m in kept.values()} == {"cli"}
    corrupt = next(p for p in broken if p.name == "966.dcm")
    assert "codestream is corrupt" in kept[_sha(corrupt.read_bytes())]["reason"]
    created = _tree(tmp_path) - before
    outside = [p for p in created if not p.startswith(("home", "out", "inputs"))]
    assert not outside, f"written outside the state folder and --out: {outside}"


# -- HTTP ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory,
         pneumonia_predictor) -> Iterator[tuple[TestClient, ScreeningService]]:  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("http-home")
    store = Store(f"sqlite:///{home / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=home, max_image_pixels=64_000_000, workers=2)
    app = ApiKeyMiddleware(build_app(lambda: core, max_upload_bytes=lambda: 32 * 1024**2), keys=[KEY])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, core
    core.close()


def test_hostile_uploads_over_http(http: tuple[TestClient, ScreeningService], hostile: dict[str, bytes]) -> None:
    client, core = http
    for name, data in hostile.items():
        kind = "application/zip" if name.endswith(".zip") else "application/dicom"
        response = client.post("/screen?wait=120", content=data, headers={**AUTH, "Content-Type": kind})
        assert response.status_code in (200, 400, 413), (name, response.status_code, response.text[:300])
        _no_canary(response.text)
        body = response.json()
        if response.status_code == 200:
            for result in body["studies"]:
                _check_result(result)
        else:
            assert body["reason"], name
    # Multipart: every hostile file in one upload; the answer covers each of them.
    files = [("files", (name, data, "application/octet-stream")) for name, data in hostile.items()
             if not name.startswith("zip-bomb")]
    response = client.post("/screen?wait=120", files=files, headers=AUTH)
    assert response.status_code == 200, response.text[:500]
    kept = _quarantined(core.home / "quarantine")
    assert {"http", "job"} <= {m["channel"] for m in kept.values()}
    assert kept[_sha(hostile["text.dcm"])]["channel"] == "http"  # 400: nothing DICOM, still kept
    assert _sha(hostile["truncated-pixels.dcm"]) in kept
    assert client.get("/studies/1.2.3", headers=AUTH).status_code == 404  # still serving


def test_huge_and_many_part_multipart_bodies(http: tuple[TestClient, ScreeningService]) -> None:
    client, _ = http

    def chunks(total: int) -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.dcm\"\r\n\r\n"
        block = b"\0" * 1024**2
        for _ in range(total // len(block)):
            yield block
        yield b"\r\n--b--\r\n"

    streamed = client.post("/screen", content=chunks(64 * 1024**2),
                           headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "limited" in streamed.json()["reason"]
    declared = client.post("/screen", content=b"x", headers={**AUTH, "Content-Type": "application/dicom",
                                                               "Content-Length": str(10**12)})
    assert declared.status_code in (400, 413)
    parts = b"".join(b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"%d\"\r\n\r\nx\r\n" % i
                     for i in range(12_000)) + b"--b--\r\n"
    many = client.post("/screen", content=parts, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"})
    assert many.status_code == 400 and many.json()["reason"]


def test_stow_rs_failures_are_quarantined(http: tuple[TestClient, ScreeningService], hostile: dict[str, bytes]) -> None:
    client, core = http
    boundary = "fuzz"
    bad = [hostile["truncated-header.dcm"], hostile["png.dcm"], hostile["nested-800.dcm"]]
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
                    for part in bad) + f"--{boundary}--\r\n".encode()
    response = client.post("/dicomweb/studies", content=body, headers={
        **AUTH, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert response.status_code == 409 and len(response.json()["00081198"]["Value"]) == 3
    kept = _quarantined(core.home / "quarantine")
    for part in bad:
        assert kept[_sha(part)]["channel"] in ("stow", "http", "job")


# -- the DICOM receiver ------------------------------------------------------------------------
def test_hostile_datasets_over_dimse(tmp_path: Path, pneumonia_predictor, hostile: dict[str, bytes],  # type: ignore[no-untyped-def]
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Send each file's data set bytes as they are (pynetdicom would otherwise decode and re-encode them).
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    store = Store(f"sqlite:///{tmp_path / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=tmp_path / "home", max_image_pixels=64_000_000)
    core.start_background(stable_seconds=0.3, interval=0.1)
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], core.receive, quarantine=core.quarantine)
    statuses: dict[str, int] = {}
    try:
        ae = AE(ae_title="FUZZER")
        for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"):  # one context each: both get accepted
            ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", syntax)
        ae.add_requested_context(Verification)
        for name in ("length-huge-patientname.dcm", "nested-800.dcm", "truncated-pixels.dcm", "rows-cols-huge.dcm",
                     "bits-stored-over-allocated.dcm", "ts-claims-big-endian.dcm"):
            # pynetdicom sends a file's data set as it is, without decoding it first.
            path = tmp_path / name
            path.write_bytes(hostile[name])
            assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SECONDREADER")
            assert assoc.is_established, name
            try:
                answer = assoc.send_c_store(path)
                statuses[name] = int(answer.Status) if "Status" in answer else -1
            finally:
                if assoc.is_established:
                    assoc.release()
        # Accepted but undecodable pixels fail in the job, once the study is stable: quarantined too.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                m["channel"] == "job" for m in core.quarantine.entries()):
            time.sleep(0.2)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SECONDREADER")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0, "the receiver must stay up"
        assoc.release()
    finally:
        receiver.stop()
        core.close()
    assert all(s in (0x0000, 0xC210, 0xA700) for s in statuses.values()), statuses
    assert statuses["nested-800.dcm"] == 0xC210
    kept = _quarantined(tmp_path / "home" / "quarantine")
    assert {"dicom", "job"} <= {m["channel"] for m in kept.values()}
