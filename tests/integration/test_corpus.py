"""Every file of the shared real corpus, screened on its own: a status and a reason for each.

The expectations below were written from each file's header (Modality, Body Part, SOP Class) and the
corpus' own notes on which files are deliberately broken. Each file is screened alone so that the
corpus' many copies of one SOP Instance UID do not hide each other as duplicates.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from secondreader.dicom.io import InputFile
from secondreader.pipeline import ScreeningOptions, screen_inputs

from ..contract import assert_study_result

pytestmark = [pytest.mark.weights, pytest.mark.slow, pytest.mark.shared_data]

SCREENED = {"siim-cr-chest-pa.dcm", "siim-cr-chest-pa-monochrome1.dcm", "966_fixed.dcm", "RG1_J2KI.dcm",
            "RG1_JLSN.dcm"}
FAILED = {
    "966.dcm": "JPEG 2000 Image Compression (Lossless Only) codestream is corrupt and cannot be decoded",
    "JPEGLosslessP14SV1_1s_1f_u_16_16.dcm": "file has no Study Instance UID",
    "README.md": "not a DICOM file: it is a text file",
    "README.rst": "not a DICOM file: it is a text file",
    "LICENSE": "not a DICOM file: it is a text file",
    "data-readme.md": "not a DICOM file: it is a text file",
    "00000001_000.png": "not a DICOM file: it is a PNG image",
    "00027426_000.png": "not a DICOM file: it is a PNG image",
}
# Ineligible files: the reason by name pattern (checked in order, first match).
INELIGIBLE = [
    (r"^RG2_", "not a chest radiograph: Body Part Examined HIP"),
    (r"^RG3_", "not a chest radiograph: Body Part Examined EXTREMITY"),
    (r"^NM_Kakadu", "not a chest radiograph: Body Part Examined HAND"),
    (r"^JPEG2KLossless_1s_1f_u_16_16", "Body Part Examined missing and descriptions do not say chest"),
    (r"^(JPEG-lossy|JPEG-LL|JPEG2000|JPEGExtended_1s_1f_u_16_12)\.?", "not a chest radiograph: Modality NM"),
    (r"^(SC_rgb|JPEGBaseline|image_dfl)", "not a chest radiograph: Modality OT"),
    (r"^GDCMJ2K_TextGBR", "not a chest radiograph: Modality missing"),
    (r"^OsirixFake", "not a chest radiograph: Modality (not a defined term)"),  # SC is no Modality term
    (r"^report_dfl", "not an image: Enhanced SR Storage"),
    (r"^wave_dfl", "not an image: Hemodynamic Waveform Storage"),
    (r"^rtdose", "not a projection radiograph object: RT Dose Storage"),
    (r"^emri_small", "not a projection radiograph object: Enhanced MR Image Storage"),
    (r"^(MR|JPEGLossless_1s_1f_u_16_12)", "not a projection radiograph object: MR Image Storage"),
    (r"^(US1|OBXXXX1A_rle_2frame|IM00001|JPEGLosslessP14SV1_3s)", "Ultrasound"),
    (r"^(OBXXXX1A|JPEGExtended_3s|JPEGLosslessP14SV1_1s_1f_u_08)", "Ultrasound Image Storage"),
    (r"^CT0012", "not a projection radiograph object: Enhanced CT Image Storage"),
    (r"^(CT|\d{8}-|693_|ELSCINT|MAROTECH|TOSHIBA|J2K_pixelrep|explicit_VR-UN|JPEGLossless_1s_1f_i_16_16_bad)",
     "not a projection radiograph object: CT Image Storage"),
]

CORPUS_DIRS = ("dicom", "cxr")


def _corpus(shared: Path) -> list[Path]:
    files = []
    for d in CORPUS_DIRS:
        files += sorted(p for p in (shared / d).rglob("*") if p.is_file())
    return files


@pytest.fixture(scope="module")
def corpus_results(shared_data: Path, unscoped_pneumonia_predictor) -> dict[str, list[dict]]:  # type: ignore[no-untyped-def]
    # decoding and geometry on real (mostly adult) files: the model's paediatric scope is lifted
    options = ScreeningOptions(predictors=[unscoped_pneumonia_predictor])
    results: dict[str, list[dict]] = {}
    for path in _corpus(shared_data):
        item = InputFile(source=path.name, path=path, size=path.stat().st_size)
        (result,) = list(screen_inputs([item], options))
        results[str(path.relative_to(shared_data))] = result.to_json()
    return results


def test_corpus_is_complete(corpus_results: dict[str, dict]) -> None:
    assert len(corpus_results) >= 170


def test_every_file_has_the_expected_status_and_reason(corpus_results: dict[str, dict]) -> None:
    problems = []
    for rel, result in corpus_results.items():
        assert_study_result(result)
        name = Path(rel).name
        (inst,) = result["instances"]
        if name in SCREENED:
            expected = ("screened", None)
        elif name in FAILED:
            expected = ("failed", FAILED[name])
        else:
            reason = next((r for pattern, r in INELIGIBLE if re.search(pattern, name)), None)
            assert reason is not None, f"no expectation for {rel}"
            expected = ("ineligible", reason)
        status, reason = inst["status"], inst["reason"]
        if status != expected[0] or (expected[1] is not None and expected[1] not in (reason or "")):
            problems.append(f"{rel}: got {status} / {reason!r}, expected {expected}")
        if status != "screened":
            assert result["reason"], rel
    assert not problems, "\n".join(problems)


def test_corrupt_chest_fails_but_its_fixed_twin_screens_alone_and_together(
    shared_data: Path, pneumonia_predictor  # type: ignore[no-untyped-def]
) -> None:
    folder = shared_data / "dicom" / "pylibjpeg-data" / "ds" / "JPEG2000Lossless"
    items = [InputFile(n, folder / n, size=(folder / n).stat().st_size) for n in ("966.dcm", "966_fixed.dcm")]
    (result,) = list(screen_inputs(items, ScreeningOptions(predictors=[pneumonia_predictor])))
    statuses = [(i["source"], i["status"]) for i in result.to_json()["instances"]]
    assert statuses == [("966.dcm", "failed"), ("966_fixed.dcm", "screened")]
    assert result.status.value == "screened"


def test_screened_real_radiographs_have_findings_regions_in_bounds(corpus_results: dict[str, dict]) -> None:
    for result in corpus_results.values():
        if result["status"] != "screened":
            continue
        (finding,) = result["findings"]
        assert finding["code"] == "pneumonia"
        assert result["timing_ms"]["inference"] > 0
        for region in result["regions"]:
            assert region["finding"] == "pneumonia"
