"""One picture in different encodings gives the same probability (within 0.02)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from secondreader.dicom.io import InputFile, read_dataset
from secondreader.pipeline import ScreeningOptions, screen_inputs, screen_pixels

from ..factories import make_cxr_dataset, write

pytestmark = [pytest.mark.weights, pytest.mark.slow]


def _probability(path: Path, predictor) -> float:  # type: ignore[no-untyped-def]
    item = InputFile(path.name, path, size=path.stat().st_size)
    (result,) = list(screen_inputs([item], ScreeningOptions(predictors=[predictor], explain=False)))
    assert result.status.value == "screened", result.to_json()
    return result.findings[0].probability


@pytest.mark.shared_data
def test_monochrome1_twin_matches_the_original(shared_data: Path, unscoped_pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    # numerical agreement on a real adult film: the model's paediatric scope is lifted
    original = _probability(shared_data / "cxr" / "siim-cr-chest-pa.dcm", unscoped_pneumonia_predictor)
    twin = _probability(shared_data / "cxr" / "siim-cr-chest-pa-monochrome1.dcm", unscoped_pneumonia_predictor)
    assert abs(original - twin) <= 0.02


@pytest.mark.shared_data
def test_encodings_of_one_real_radiograph_agree(shared_data: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                unscoped_pneumonia_predictor) -> None:
    pneumonia_predictor = unscoped_pneumonia_predictor  # a real adult film: the paediatric scope is lifted
    source = shared_data / "cxr" / "siim-cr-chest-pa.dcm"
    ds = read_dataset(source.read_bytes()).dataset
    pixels = ds.pixel_array.astype(np.float64) / 255.0  # MONOCHROME2, 8-bit, no VOI in the header
    variants = {
        "uncompressed-8bit": make_cxr_dataset(*pixels.shape, bits_stored=8, bits_allocated=8, pixels=pixels),
        "jpeg2000-lossless": make_cxr_dataset(*pixels.shape, bits_stored=8, bits_allocated=8, pixels=pixels,
                                              transfer_syntax=JPEG2000Lossless),
        "rescaled-16bit": make_cxr_dataset(*pixels.shape, bits_stored=16, value_bits=12, pixels=pixels,
                                           rescale=(0.25, -100.0)),
        "monochrome1-12bit": make_cxr_dataset(*pixels.shape, bits_stored=12, pixels=pixels,
                                              photometric="MONOCHROME1"),
    }
    probabilities = {"original": _probability(source, pneumonia_predictor)}
    for name, variant in variants.items():
        probabilities[name] = _probability(write(variant, tmp_path / f"{name}.dcm"), pneumonia_predictor)
    png = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8), mode="L").save(png, format="PNG")
    png_pixels = np.asarray(Image.open(io.BytesIO(png.getvalue())), dtype=np.float32) / 255.0
    # A PNG is already a display image: the header-less percentile window is applied like DICOM's.
    from secondreader.preprocessing import window_frame
    (finding,) = screen_pixels(window_frame(png_pixels, windowed=False, invert=False), [pneumonia_predictor])
    probabilities["png"] = finding.probability
    spread = max(probabilities.values()) - min(probabilities.values())
    assert spread <= 0.02, probabilities


def test_concurrent_screens_of_one_study_write_its_outputs_safely(tmp_path: Path, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    """Two jobs for the same study (a re-send, a duplicate upload) write the same output files at
    the same time: each write lands whole, none fails, no temporary file is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    from secondreader.pipeline import screen_paths

    source = tmp_path / "in" / "a.dcm"
    write(make_cxr_dataset(768, 768, lesion_at=(300, 400)), source)
    options = ScreeningOptions(predictors=[pneumonia_predictor], max_pixels=64_000_000, out_dir=tmp_path / "out")
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: list(screen_paths([source.parent], options)), range(6)))
    assert all(r[0].status.value == "screened" and r[0].dicom for r in results)
    assert [r[0].to_json()["artifacts"] for r in results] == [results[0][0].to_json()["artifacts"]] * 6
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written and not [p for p in written if p.name.endswith(".tmp")]
    for path in written:
        if path.suffix == ".dcm":
            assert read_dataset(path.read_bytes()).dataset.SOPInstanceUID
        elif path.suffix == ".png":
            Image.open(path).verify()
