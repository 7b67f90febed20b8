"""Inputs are read from files, never whole into memory (issue 30's upload gaps, issue 31's "header
once, pixels once"): a zip member is unpacked in chunks into one scratch file, counting the bytes
that come out against the upload's budget (not what its headers declare); a plain file is not
copied; pydicom reads the header once and the pixel data once; a failing member is moved into the
quarantine; scratch files are gone after each study, and after a crash."""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pydicom.filereader
import pytest

import secondreader.dicom.io as dicom_io
import secondreader.pipeline as pipeline
from secondreader.dicom.io import InputFile, ZipBudget, iter_inputs, read_dataset, zip_budget
from secondreader.errors import InvalidInputError
from secondreader.pipeline import ScreeningOptions, parse_input, screen_inputs
from secondreader.quarantine import Quarantine
from secondreader.results import InstanceStatus

from ..conftest import CANARY_NAME
from ..factories import make_cxr_dataset, to_bytes

MIB = 1024 * 1024


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def test_a_plain_file_is_read_where_it_lies(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(to_bytes(make_cxr_dataset(64, 64)))
    (item,) = iter_inputs([path])
    assert isinstance(item, InputFile)
    staged = item.stage(tmp_path / "scratch")
    assert staged.path == path and not staged.temporary
    staged.remove()
    assert path.is_file() and _files(tmp_path / "scratch") == []


def test_the_running_count_stops_a_member_past_the_upload_budget(tmp_path: Path) -> None:
    data = to_bytes(make_cxr_dataset(256, 256))
    archive = _zip(tmp_path / "a.zip", {"a.dcm": data})
    (item,) = iter_inputs([archive])
    assert isinstance(item, InputFile) and item.budget is not None
    assert item.budget.limit == zip_budget(archive.stat().st_size)
    # what the upload's other members already unpacked leaves less than this member holds
    shared = ZipBudget(limit=len(data) + 1000)
    shared.take(1000 + 1)
    tight = InputFile(item.source, item.path, item.member, item.size, budget=shared)
    with pytest.raises(InvalidInputError, match=r"^zip archive unpacks past its budget of 0 MiB$"):
        tight.stage(tmp_path / "scratch")
    assert _files(tmp_path / "scratch") == []  # the partial file is removed
    staged = item.stage(tmp_path / "scratch")
    assert staged.temporary and staged.path.read_bytes() == data and item.budget.used == len(data)
    staged.remove()
    assert _files(tmp_path / "scratch") == []


def test_the_zips_of_one_upload_share_one_budget(tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    folder.mkdir()
    zips = [_zip(folder / f"{i}.zip", {f"{i}.dcm": to_bytes(make_cxr_dataset(32, 32))}) for i in range(3)]
    items = [i for i in iter_inputs([folder]) if isinstance(i, InputFile)]
    assert len(items) == 3 and len({id(i.budget) for i in items}) == 1
    assert items[0].budget is not None
    assert items[0].budget.limit == zip_budget(sum(z.stat().st_size for z in zips))


def test_a_header_lying_about_a_member_size_gets_no_more_than_it_declares(tmp_path: Path) -> None:
    data = to_bytes(make_cxr_dataset(512, 512))
    archive = _zip(tmp_path / "lying.zip", {"a.dcm": data})
    raw = bytearray(archive.read_bytes())
    declared = 4096
    struct.pack_into("<I", raw, raw.index(b"PK\x03\x04") + 22, declared)
    struct.pack_into("<I", raw, raw.rindex(b"PK\x01\x02") + 24, declared)
    archive.write_bytes(bytes(raw))
    (item,) = iter_inputs([archive])
    assert isinstance(item, InputFile) and item.size == declared
    with pytest.raises(InvalidInputError, match=r"^zip member is corrupt or cannot be unpacked$"):
        item.stage(tmp_path / "scratch")
    assert item.budget is not None and item.budget.used <= declared
    assert _files(tmp_path / "scratch") == []


def test_read_dataset_from_a_path_leaves_the_pixel_data_in_the_file(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "big.dcm"
    path.write_bytes(to_bytes(make_cxr_dataset(2048, 2048)))  # 8 MiB of pixel data
    tracemalloc.start()
    try:
        dicom = read_dataset(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB, f"{peak / MIB:.1f} MiB"
    assert len(dicom.dataset.PixelData) == 2048 * 2048 * 2  # read now, from the file
    assert read_dataset(path.read_bytes()).dataset.PixelData == dicom.dataset.PixelData
    # the safety checks work on a path as on bytes
    png = tmp_path / "x.dcm"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 400)
    with pytest.raises(Exception, match="it is a PNG image"):
        read_dataset(png)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often pydicom parses a file and reads a deferred value, and how often a zip member is
    unpacked."""
    counts = {"dcmread": 0, "deferred": 0, "unpacked": 0}
    real_read, real_deferred, real_unpack = pydicom.dcmread, pydicom.filereader.read_deferred_data_element, \
        dicom_io._unpack

    def dcmread(*args: Any, **kwargs: Any) -> Any:
        counts["dcmread"] += 1
        return real_read(*args, **kwargs)

    def deferred(*args: Any, **kwargs: Any) -> Any:
        counts["deferred"] += 1
        return real_deferred(*args, **kwargs)

    def unpack(*args: Any, **kwargs: Any) -> Any:
        counts["unpacked"] += 1
        return real_unpack(*args, **kwargs)

    monkeypatch.setattr(dicom_io.pydicom, "dcmread", dcmread)
    monkeypatch.setattr(pydicom.filereader, "read_deferred_data_element", deferred)
    monkeypatch.setattr(dicom_io, "_unpack", unpack)
    return counts


def test_each_input_is_unpacked_once_its_header_read_once_and_its_pixels_once(
        tmp_path: Path, pneumonia_predictor: Any, counted: dict[str, int]) -> None:
    study = "1.2.826.0.1.3680043.8.498.424242"
    members = {f"{i}.dcm": to_bytes(make_cxr_dataset(1024, 1024, study_uid=study)) for i in range(2)}
    archive = _zip(tmp_path / "study.zip", members)
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(to_bytes(make_cxr_dataset(1024, 1024, study_uid=study)))
    options = ScreeningOptions(predictors=[pneumonia_predictor], explain=False, scratch_dir=tmp_path / "scratch")
    (result,) = list(screen_inputs(iter_inputs([archive, plain]), options))
    assert [i.status for i in result.instances] == [InstanceStatus.SCREENED] * 3
    assert counted == {"dcmread": 3, "deferred": 3, "unpacked": 2}
    assert _files(tmp_path / "scratch") == []


def test_a_failing_member_is_moved_into_the_quarantine_and_no_scratch_file_outlives_its_study(
        tmp_path: Path, pneumonia_predictor: Any) -> None:
    good = to_bytes(make_cxr_dataset(256, 256))
    truncated = to_bytes(make_cxr_dataset(256, 256))[:-5000]  # ends inside its pixel data
    archive = _zip(tmp_path / "a.zip", {"good.dcm": good, "png.dcm": b"\x89PNG\r\n\x1a\n" + b"\0" * 500,
                                        "truncated.dcm": truncated})
    quarantine = Quarantine(tmp_path / "home" / "quarantine")
    options = ScreeningOptions(predictors=[pneumonia_predictor], explain=False, quarantine=quarantine)
    assert options.scratch() == tmp_path / "home" / "scratch"
    results = list(screen_inputs(iter_inputs([archive]), options))
    reasons = " ".join(r.reason or "" for r in results) + " ".join(i.reason or "" for r in results for i in r.instances)
    assert "it is a PNG image" in reasons and "truncated" in reasons and CANARY_NAME not in reasons
    kept = {m["size"]: m for m in quarantine.entries()}
    assert kept[len(truncated)]["kind"] == "zip member" and kept[508]["kind"] == "zip member"
    assert _files(tmp_path / "home" / "scratch") == []


def test_scratch_files_are_removed_after_a_crash(tmp_path: Path, pneumonia_predictor: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    study = "1.2.826.0.1.3680043.8.498.434343"
    archive = _zip(tmp_path / "a.zip", {f"{i}.dcm": to_bytes(make_cxr_dataset(64, 64, study_uid=f"{study}.{i}"))
                                        for i in range(3)})
    scratch = tmp_path / "scratch"
    options = ScreeningOptions(predictors=[pneumonia_predictor], explain=False, scratch_dir=scratch)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "run_study", boom)  # each study fails as a study: the run goes on
    results = list(screen_inputs(iter_inputs([archive]), options))
    assert len(results) == 3 and all("internal error" in (r.reason or "") for r in results)
    assert _files(scratch) == []

    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_study", interrupt)  # the whole run stops mid-way
    with pytest.raises(KeyboardInterrupt):
        list(screen_inputs(iter_inputs([archive]), options))
    assert _files(scratch) == []
    # a consumer that stops early
    monkeypatch.undo()
    results_iter: Iterator[Any] = screen_inputs(iter_inputs([archive]), options)
    next(results_iter)
    results_iter.close()  # type: ignore[attr-defined]
    assert _files(scratch) == []


def test_a_parsed_member_s_scratch_file_goes_with_it(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"a.dcm": to_bytes(make_cxr_dataset(64, 64))})
    (item,) = iter_inputs([archive])
    assert isinstance(item, InputFile)
    parsed = parse_input(item, scratch=tmp_path / "scratch")
    assert parsed.instance is not None and len(_files(tmp_path / "scratch")) == 1
    del parsed  # a caller that never releases it (training, the audit's thumbnails)
    assert _files(tmp_path / "scratch") == []


def test_the_service_removes_scratch_files_a_killed_process_left_at_its_start(tmp_path: Path,
                                                                             pneumonia_predictor: Any) -> None:
    """A process killed outright (SIGKILL, out of memory) cannot remove its unpacked members: the
    next start does, but only those older than a live study's could be (another process may share
    the folder), and nothing else in the folder."""
    import os
    import time

    from secondreader.service.core import ScreeningService
    from secondreader.store import Store

    home = tmp_path / "home"
    scratch = home / "scratch"
    scratch.mkdir(parents=True)
    stale, fresh, other = scratch / "member-old.dcm", scratch / "member-new.dcm", scratch / "notes.txt"
    for path in (stale, fresh, other):
        path.write_bytes(b"x" * 1024)
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    store = Store(f"sqlite:///{tmp_path / 'sr.db'}")
    store.migrate()
    service = ScreeningService(store, [pneumonia_predictor], home=home, max_image_pixels=64_000_000, workers=1)
    try:
        assert service.options.scratch() == scratch
        assert not stale.exists() and fresh.exists() and other.exists()
    finally:
        service.close()
