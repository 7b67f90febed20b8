"""Contract 4: SC, FRACTIONAL SEG and TID 1500 SR for a screened instance, read back with highdicom,
checked with dciodvfy, with deterministic UIDs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from secondreader.dicom.io import InputFile
from secondreader.model.card import load_card
from secondreader.outputs.provenance import output_uid
from secondreader.pipeline import ScreeningOptions, screen_inputs

from ..conftest import require
from ..factories import make_cxr_dataset, write

pytestmark = [pytest.mark.weights, pytest.mark.slow]


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory, pneumonia_predictor):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("src")
    ds = make_cxr_dataset(640, 560, lesion_at=(300, 200), window=(2048, 4096))
    ds.PatientName = "CANARYSOLO"  # a single-component name makes highdicom warn, quoting it
    path = write(ds, folder / "chest.dcm")
    out = tmp_path_factory.mktemp("out")
    options = ScreeningOptions(predictors=[pneumonia_predictor], out_dir=out)
    (result,) = list(screen_inputs([InputFile(path.name, path, size=path.stat().st_size)], options))
    return result.to_json(), out, ds, options, path


def _load(screened, kind: str) -> pydicom.Dataset:  # type: ignore[no-untyped-def]
    result, out, *_ = screened
    (rel,) = [p for p in result["artifacts"]["dicom"] if p.endswith(f"/{kind}.dcm")]
    return pydicom.dcmread(out / rel)


def test_three_objects_per_screened_instance(screened) -> None:  # type: ignore[no-untyped-def]
    result, out, source, *_ = screened
    assert result["status"] == "screened"
    assert sorted(Path(p).name for p in result["artifacts"]["dicom"]) == ["sc.dcm", "seg.dcm", "sr.dcm"]
    for kind in ("sc", "seg", "sr"):
        ds = _load(screened, kind)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert "AI RESULT" in ds.SeriesDescription
        ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "secondreader"]
        assert ours and ours[0].DeviceSerialNumber == load_card(Path("models/cxr-pneumonia")).device_uid
        assert "cxr-pneumonia" in ours[0].ManufacturerModelName


def test_secondary_capture_is_bannered_rgb(screened) -> None:  # type: ignore[no-untyped-def]
    sc = _load(screened, "sc")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    assert sc.ImageComments == "AI result — second reader — not for primary diagnosis"
    assert sc.pixel_array.shape[-1] == 3


def test_segmentation_is_fractional_and_references_the_source(screened) -> None:  # type: ignore[no-untyped-def]
    result, out, source, *_ = screened
    (rel,) = [p for p in result["artifacts"]["dicom"] if p.endswith("/seg.dcm")]
    seg = hd.seg.segread(out / rel)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    assert [d.segment_label for d in seg.SegmentSequence] == ["pneumonia"]
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == source.SOPInstanceUID
    assert seg.pixel_array.shape[-2:] == (640, 560)
    # the SEG is the heatmap: its peak lies in a region drawn from the same heatmap
    heat = np.asarray(seg.pixel_array, dtype=float).reshape(640, 560)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert result["regions"], "the lesion phantom should be flagged"
    assert any(r0 <= peak[0] < r1 and c0 <= peak[1] < c1 for r0, c0, r1, c1 in (r["bbox"] for r in result["regions"]))


def test_report_is_tid1500_with_a_roi_per_region(screened) -> None:  # type: ignore[no-untyped-def]
    result, out, *_ = screened
    (rel,) = [p for p in result["artifacts"]["dicom"] if p.endswith("/sr.dcm")]
    sr = hd.sr.srread(out / rel)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(result["regions"])
    text = str(sr)
    assert "Second-review priority score" in text and "Probability of pneumonia" in text


def test_outputs_pass_dciodvfy(screened) -> None:  # type: ignore[no-untyped-def]
    require(shutil.which("dciodvfy") is not None, "dciodvfy missing (Debian package dicom3tools)")
    result, out, *_ = screened
    for rel in result["artifacts"]["dicom"]:
        report = subprocess.run(["dciodvfy", str(out / rel)], capture_output=True, text=True, check=False)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{Path(rel).name}: {errors}"


def test_uids_are_deterministic_so_a_resend_replaces_itself(screened) -> None:  # type: ignore[no-untyped-def]
    result, out, source, options, path = screened
    first = {k: _load(screened, k).SOPInstanceUID for k in ("sc", "seg", "sr")}
    (again,) = list(screen_inputs([InputFile(path.name, path, size=path.stat().st_size)], options))
    second = {k: _load((again.to_json(), out), k).SOPInstanceUID for k in ("sc", "seg", "sr")}
    assert first == second and len(set(first.values())) == 3
    card = options.predictors[0].card
    other = type(card)(**{**{f: getattr(card, f) for f in card.__dataclass_fields__}, "version": "1.0.1",
                          "device_uid": "2.25.1"})
    assert output_uid("seg", source.SOPInstanceUID, [other]) != first["seg"]
