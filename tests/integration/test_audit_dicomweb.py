"""``secondreader audit http://.../dicom-web`` against a real Orthanc with its DICOMweb plugin:
QIDO-RS by Study Date range and by accession numbers, WADO-RS retrieval (original transfer
syntax), reports matched by accession number. Inside the private network namespace only (Orthanc
1.10 listens on every interface)."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from secondreader.audit.run import run_audit

from .. import conftest
from ..conftest import require
from ..factories import make_cxr_dataset, to_bytes, with_patient_age
from ..orthanc import Orthanc, in_private_network_namespace
from .test_audit import assert_no_phi, config

pytestmark = [pytest.mark.weights, pytest.mark.slow]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, dict[str, str], Path]]:
    require(shutil.which("Orthanc") is not None, "Orthanc is not installed (Debian package orthanc)")
    require(Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").is_file(),
            "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")
    require(in_private_network_namespace(),
            "Orthanc listens on all interfaces: run the suite inside `unshare -n` (see .ci/run)")
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc-dw"), dicomweb=True)
    rg1 = with_patient_age(conftest.testdata_file("RG1_J2KR.dcm"), "004Y")  # JPEG 2000 lossless; a child's age
    recent = make_cxr_dataset(512, 512, lesion_at=(250, 300))
    recent.StudyDate, recent.AccessionNumber = "20250110", "DW-ACC-2"
    older = make_cxr_dataset(512, 512)
    older.StudyDate, older.AccessionNumber = "19990601", "DW-ACC-3"
    for data in (rg1, to_bytes(recent), to_bytes(older)):
        httpx.post(f"{orthanc.base}/instances", content=data, timeout=60).raise_for_status()
    import pydicom

    rg1_uid = str(pydicom.dcmread(conftest.testdata_file("RG1_J2KR.dcm"), stop_before_pixels=True).StudyInstanceUID)
    root = tmp_path_factory.mktemp("audit-dw")
    with open(root / "reports.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["study_instance_uid", "accession_number", "report_text"])
        writer.writerow([rg1_uid, "", "No focal consolidation."])
        writer.writerow(["", "DW-ACC-2", "Consolidation in the right lower lobe."])
    yield orthanc, {"rg1": rg1_uid, "recent": str(recent.StudyInstanceUID), "older": str(older.StudyInstanceUID)}, root
    orthanc.stop()


def test_dicomweb_archive_by_date_range(pacs, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    orthanc, uids, root = pacs
    out = root / "by-date"
    outcome = run_audit(config(root, out, models_dir, archive=[f"{orthanc.base}/dicom-web"],
                               date_range=("20000101", "20301231"), workers=1))
    rows = {r["study_instance_uid"]: r for r in outcome.rows}
    assert set(rows) == {uids["rg1"], uids["recent"]}  # 2004 and 2025; not the 1999 study
    rg1 = rows[uids["rg1"]]
    assert rg1["status"] == "screened" and rg1["discordant_findings"] == ["pneumonia"]
    assert rg1["timing_ms"]["fetch"] > 0
    recent = rows[uids["recent"]]
    assert recent["report"] == "available" and recent["labels"] == {"pneumonia": "present"}
    assert recent["accession_number"] is None  # matched by it, but not written without the flag
    assert not recent["discordant"]
    assert (out / rg1["images"]["pneumonia"]["overlay"]).is_file()
    assert_no_phi(out)


def test_dicomweb_archive_by_accession_numbers(pacs, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    orthanc, uids, root = pacs
    out = root / "by-accession"
    outcome = run_audit(config(root, out, models_dir, archive=[f"{orthanc.base}/dicom-web"],
                               accessions=["DW-ACC-3", "NO-SUCH"], include_accession=True, workers=1))
    assert [r["study_instance_uid"] for r in outcome.rows] == [uids["older"]]
    row = outcome.rows[0]
    assert row["status"] == "screened" and row["report"] == "missing" and row["accession_number"] == "DW-ACC-3"
    assert "DW-ACC-3" in (out / "audit.csv").read_text()


def test_unreachable_dicomweb_server_is_a_clear_error(tmp_path: Path, models_dir: Path) -> None:
    (tmp_path / "reports.csv").write_text("accession_number,report_text\nA,No consolidation.\n")
    from secondreader.errors import InfrastructureError

    with pytest.raises(InfrastructureError, match="QIDO-RS query failed"):
        run_audit(config(tmp_path, tmp_path / "out", models_dir, archive=["http://127.0.0.1:9/dicom-web"],
                         accessions=["A"]))


def test_wado_rs_keeps_the_original_transfer_syntax(pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pydicom

    from secondreader.audit.archive import fetch_study

    orthanc, uids, _ = pacs
    files = fetch_study(f"{orthanc.base}/dicom-web", uids["rg1"], tmp_path / "spool")
    assert len(files) == 1 and files[0].source.endswith(".dcm") and "/" not in files[0].source
    ds = pydicom.dcmread(files[0].path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert ds.StudyInstanceUID == uids["rg1"]
