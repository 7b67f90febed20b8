"""Every pixel-bearing file of the real corpora that can be decoded is decoded, whatever its
transfer syntax (eligibility aside), and the ones that cannot fail with a reason that says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom.data
import pytest

from secondreader.dicom.instance import CxrInstance
from secondreader.dicom.io import read_dataset
from secondreader.dicom.pixels import DECODE_ERRORS, decode_display
from secondreader.errors import SecondReaderError

pytestmark = [pytest.mark.slow]

# Deliberately broken files of the corpora, and why each cannot be decoded.
UNDECODABLE = {
    "966.dcm": "codestream is corrupt",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "codestream is corrupt",
    "RG2_JPLY.dcm": "codestream is corrupt",
    "JPEG-lossy.dcm": "codestream is corrupt",
    "JPEG2000-embedded-sequence-delimiter.dcm": "codestream is corrupt",
    "JPEGLosslessP14SV1_1s_1f_u_16_16.dcm": "Modality LUT / Rescale values are malformed",
    "MR_truncated.dcm": "pixel data is truncated",
    "OT-PAL-8-face.dcm": "no 'DICM' marker",
    "rtstruct.dcm": "no 'DICM' marker",
    "no_meta.dcm": "no 'DICM' marker",
    "ExplVR_LitEndNoMeta.dcm": "no 'DICM' marker",
    "ExplVR_BigEndNoMeta.dcm": "no 'DICM' marker",
    "badVR.dcm": "header has malformed values",
    "meta_missing_tsyntax.dcm": "no Transfer Syntax UID",
    "empty_charset_LEI.dcm": "no SOP Class UID",
    "nested_priv_SQ.dcm": "'Bits Allocated'",
}


def _files(shared: Path | None) -> list[Path]:
    files: list[Path] = []
    if shared is not None:
        files += [p for p in (shared / "dicom").rglob("*") if p.is_file()
                  and p.suffix not in (".md", ".rst") and p.name != "LICENSE"]
    files += sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))
    try:
        import data_store  # the pydicom-data package
        files += sorted(p for p in (Path(data_store.__file__).parent / "data").iterdir() if p.is_file())
    except ImportError:
        pass
    return files


def _decode(path: Path) -> str:
    try:
        dicom = read_dataset(path.read_bytes())
        inst = CxrInstance.from_dataset(dicom.dataset, pixel_data_truncated=dicom.truncated)
        if not inst.has_pixel_data:
            return "no pixels"
        if inst.photometric_interpretation in ("MONOCHROME1", "MONOCHROME2"):
            image = decode_display(dicom.dataset, inst, max_pixels=200_000_000)
            assert image.frames.shape[0] == inst.number_of_frames and np.isfinite(image.frames).all()
        else:  # colour images are refused by eligibility, but must still decode
            try:
                arr = dicom.dataset.pixel_array
            except DECODE_ERRORS as exc:
                return f"error: {exc}"
            assert arr.shape[-3 if inst.samples_per_pixel == 3 else -2] == inst.rows
        return "decoded"
    except SecondReaderError as exc:
        return f"error: {exc}"


def test_every_decodable_file_decodes(shared_data: Path) -> None:
    files = _files(shared_data)
    assert len(files) > 250
    outcomes = {str(p): _decode(p) for p in files}
    wrong = []
    for path, outcome in outcomes.items():
        name = Path(path).name
        if name in UNDECODABLE:
            if not (outcome.startswith("error:") and UNDECODABLE[name] in outcome):
                wrong.append(f"{name}: expected an error with {UNDECODABLE[name]!r}, got {outcome!r}")
        elif outcome.startswith("error:"):
            wrong.append(f"{name}: {outcome}")
    assert not wrong, "\n".join(wrong)
    decoded = sum(o == "decoded" for o in outcomes.values())
    assert decoded > 200
