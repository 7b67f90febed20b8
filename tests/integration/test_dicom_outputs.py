"""Contract 4: SC, BINARY SEG and TID 1500 SR for a screened instance, read back with highdicom,
checked with dciodvfy (no error, and no warning about what we write), with deterministic UIDs.
That OHIF shows them is tested in a browser (test_ohif.py)."""

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


def test_secondary_capture_is_bannered_rgb_and_linked_to_its_source(screened) -> None:  # type: ignore[no-untyped-def]
    result, out, source, *_ = screened
    sc = _load(screened, "sc")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    assert sc.ImageComments == "AI result — second reader — not for primary diagnosis"
    assert sc.pixel_array.shape[-1] == 3
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.DerivationDescription
    assert "Laterality" not in sc and sc.BodyPartExamined == "CHEST"
    assert sc.StudyDescription == source.StudyDescription


def _saturated(sc: pydicom.Dataset) -> float:
    """The share of the SC's pixels in strong heat colours (the grey radiograph has none), the
    banner (top) and the legend (bottom) left out."""
    rgb = sc.pixel_array.astype(int)[20:-40]
    return float(np.mean((rgb.max(axis=-1) - rgb.min(axis=-1)) > 40))


def test_a_negative_study_looks_negative_on_its_secondary_capture(screened, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 adult_pneumonia_predictor) -> None:
    """Heat on an absolute scale: the positive study's SC shows colour, a negative study's (the
    adult model on the same phantom, probability under its point) next to none, though its
    heatmap has a hottest spot like any other."""
    folder = tmp_path / "src"
    folder.mkdir()
    ds = make_cxr_dataset(640, 560, lesion_at=(300, 200), window=(2048, 4096), patient_age="053Y")
    path = write(ds, folder / "adult.dcm")
    options = ScreeningOptions(predictors=[adult_pneumonia_predictor], out_dir=tmp_path / "out")
    (negative,) = list(screen_inputs([InputFile(path.name, path, size=path.stat().st_size)], options))
    negative_json = negative.to_json()
    (finding,) = negative_json["findings"]
    assert not finding["positive"] and negative_json["artifacts"]["heatmaps"], "the adult phantom is expected negative"
    negative_sc = _load((negative_json, tmp_path / "out"), "sc")
    positive_sc = _load(screened, "sc")
    assert screened[0]["findings"][0]["positive"]
    assert _saturated(negative_sc) < 0.001 and _saturated(positive_sc) > 0.005, (_saturated(negative_sc),
                                                                               _saturated(positive_sc))


def test_segmentation_is_binary_regions_referencing_the_source(screened) -> None:  # type: ignore[no-untyped-def]
    result, out, source, *_ = screened
    (rel,) = [p for p in result["artifacts"]["dicom"] if p.endswith("/seg.dcm")]
    seg = hd.seg.segread(out / rel)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel.startswith("Pneumonia AI positive p=")
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "233604007"
    assert seg.ContentCreatorName == "secondreader^AI"
    shared = seg.SharedFunctionalGroupsSequence[0]  # OHIF reads both unconditionally
    assert shared.PixelMeasuresSequence[0].PixelSpacing == [0.2, 0.2] and shared.PlaneOrientationSequence
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == source.SOPInstanceUID
    mask = np.asarray(seg.pixel_array).reshape(640, 560).astype(bool)
    assert result["regions"], "the lesion phantom should be flagged"
    # the segment is the flagged regions: every segment pixel lies in a region's box, and each
    # region holds segment pixels
    boxes = np.zeros_like(mask)
    for r0, c0, r1, c1 in (r["bbox"] for r in result["regions"]):
        boxes[r0:r1, c0:c1] = True
        assert mask[r0:r1, c0:c1].any()
    assert not (mask & ~boxes).any()


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every text value and code meaning in an SR's content tree."""
    found = [str(ds.TextValue)] if "TextValue" in ds else []
    for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
        found += [str(item.CodeMeaning) for item in ds.get(keyword, [])]
    for item in ds.get("ContentSequence", []):
        found += _texts(item)
    return found


def test_report_is_tid1500_with_a_roi_per_region(screened) -> None:  # type: ignore[no-untyped-def]
    result, out, *_ = screened
    (rel,) = [p for p in result["artifacts"]["dicom"] if p.endswith("/sr.dcm")]
    sr = hd.sr.srread(out / rel)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(result["regions"])
    # each region's measurement is named by finding, in percent, with the region's own probability
    values = sorted(round(float(g.get_measurements()[0].value), 2) for g in groups)
    assert values == sorted(round(100 * r["score"], 2) for r in result["regions"])
    assert {g.get_measurements()[0].name.meaning for g in groups} == {"Pneumonia probability"}
    assert {g.get_measurements()[0].unit.value for g in groups} == {"%"}
    # no measurement group without a region (OHIF fails on one); the image-level result is in
    # the report's qualitative evaluations, with the private scheme declared
    assert not sr.content.get_image_measurement_groups()
    text = " | ".join(_texts(sr))
    assert "Qualitative Evaluations" in text and "Second-review priority score" in text
    assert "Pneumonia: probability" in text and "positive" in text
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99SECONDREADER"


#: dciodvfy warnings that are not about what secondreader writes: the test source has no study
#: date, time or ID (type 2, empty), which a DICOMDIR would need; and dciodvfy does not know a
#: private coding scheme even where the object declares it (Coding Scheme Identification Sequence);
#: the source's one-component patient name, copied as it is.
_NOT_OURS = ("needed to build DICOMDIR", "Unrecognized defined term <99SECONDREADER>", "(0x0010,0x0010)")


def test_outputs_pass_dciodvfy(screened) -> None:  # type: ignore[no-untyped-def]
    require(shutil.which("dciodvfy") is not None, "dciodvfy missing (Debian package dicom3tools)")
    result, out, *_ = screened
    for rel in result["artifacts"]["dicom"]:
        report = subprocess.run(["dciodvfy", str(out / rel)], capture_output=True, text=True, check=False)
        lines = (report.stdout + report.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{Path(rel).name}: {errors}"
        warnings = [line for line in lines if line.startswith("Warning") and not any(n in line for n in _NOT_OURS)]
        assert not warnings, f"{Path(rel).name}: {warnings}"


def _dimension_organisations(seg: pydicom.Dataset) -> set[str]:
    return {str(item.DimensionOrganizationUID)
            for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence)}


def test_uids_are_deterministic_so_a_resend_replaces_itself(screened) -> None:  # type: ignore[no-untyped-def]
    result, out, source, options, path = screened
    first = {k: _load(screened, k).SOPInstanceUID for k in ("sc", "seg", "sr")}
    first_organisation = _dimension_organisations(_load(screened, "seg"))
    (again,) = list(screen_inputs([InputFile(path.name, path, size=path.stat().st_size)], options))
    second = {k: _load((again.to_json(), out), k).SOPInstanceUID for k in ("sc", "seg", "sr")}
    assert first == second and len(set(first.values())) == 3
    # the SEG's Dimension Organization UID too (highdicom draws a random one): one object, not two
    assert _dimension_organisations(_load((again.to_json(), out), "seg")) == first_organisation
    assert len(first_organisation) == 1 and first_organisation != {first["seg"]}
    card = options.predictors[0].card
    other = type(card)(**{**{f: getattr(card, f) for f in card.__dataclass_fields__}, "version": "1.0.1",
                          "device_uid": "2.25.1"})
    assert output_uid("seg", source.SOPInstanceUID, [other]) != first["seg"]
