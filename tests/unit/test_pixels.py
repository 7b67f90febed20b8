"""Stored values → display units: Modality LUT, VOI, MONOCHROME1, BitsStored, big-endian, frames."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ExplicitVRBigEndian, JPEG2000Lossless, RLELossless

from secondreader.dicom.instance import CxrInstance
from secondreader.dicom.io import read_dataset
from secondreader.dicom.pixels import decode_display
from secondreader.errors import CorruptPixelDataError, UnsupportedImageError
from secondreader.preprocessing import window_frame

from ..factories import chest_phantom, make_cxr_dataset, to_bytes


def _display(ds):  # type: ignore[no-untyped-def]
    ds = read_dataset(to_bytes(ds)).dataset
    inst = CxrInstance.from_dataset(ds)
    image = decode_display(ds, inst, max_pixels=10**8)
    return image, np.stack([window_frame(f, windowed=image.windowed, invert=image.invert) for f in image.frames])


REFERENCE = chest_phantom(300, 300)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits_stored", [8, 10, 12, 16])
@pytest.mark.parametrize("transfer_syntax", [None, ExplicitVRBigEndian, RLELossless, JPEG2000Lossless])
def test_variants_decode_to_the_same_picture(photometric: str, bits_stored: int, transfer_syntax) -> None:  # type: ignore[no-untyped-def]
    kwargs = {} if transfer_syntax is None else {"transfer_syntax": transfer_syntax}
    top = (1 << bits_stored) - 1
    ds = make_cxr_dataset(300, 300, photometric=photometric, bits_stored=bits_stored,
                          bits_allocated=8 if bits_stored == 8 else 16, pixels=REFERENCE,
                          window=(top / 2 + 0.5, top + 1), **kwargs)
    image, frames = _display(ds)
    assert image.windowed and image.invert == (photometric == "MONOCHROME1")
    assert frames.shape == (1, 300, 300)
    np.testing.assert_allclose(frames[0], REFERENCE, atol=1.5 / top + 1e-3)


def test_rescale_slope_and_intercept_are_applied_before_the_window() -> None:
    plain = make_cxr_dataset(300, 300, bits_stored=12, pixels=REFERENCE, window=(2048, 4096))
    rescaled = make_cxr_dataset(300, 300, bits_stored=16, value_bits=12, pixels=REFERENCE,
                                rescale=(0.25, -100.0), window=(2048, 4096))
    assert np.frombuffer(rescaled.PixelData, np.uint16).max() > 4095  # stored values really differ
    _, a = _display(plain)
    _, b = _display(rescaled)
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_without_a_window_the_percentile_window_spans_0_to_1() -> None:
    _, frames = _display(make_cxr_dataset(300, 300, pixels=REFERENCE))
    assert frames.min() == 0.0 and frames.max() == 1.0
    lo, hi = np.percentile(frames, [0.5, 99.5])
    assert lo == pytest.approx(0.0, abs=0.01) and hi == pytest.approx(1.0, abs=0.01)


def test_bits_stored_masks_high_bits() -> None:
    ds = make_cxr_dataset(300, 300, bits_stored=12, pixels=REFERENCE, window=(2048, 4096))
    arr = np.frombuffer(ds.PixelData, dtype=np.uint16).copy()
    ds.PixelData = (arr | 0xF000).tobytes()  # garbage in the unused high bits (overlay planes)
    _, frames = _display(ds)
    np.testing.assert_allclose(frames[0], REFERENCE, atol=1e-3)


def test_multi_frame_keeps_every_frame() -> None:
    image, frames = _display(make_cxr_dataset(300, 300, frames=3, pixels=REFERENCE, window=(2048, 4096)))
    assert frames.shape == (3, 300, 300)
    np.testing.assert_allclose(frames[2], frames[0])


def test_truncated_pixel_data_is_reported_before_decoding() -> None:
    ds = make_cxr_dataset(300, 300)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(CorruptPixelDataError, match="pixel data is truncated"):
        _display(ds)


def test_oversized_image_fails_before_allocation() -> None:
    ds = make_cxr_dataset(300, 300)
    ds.Rows = ds.Columns = 60000
    inst = CxrInstance.from_dataset(ds)
    with pytest.raises(UnsupportedImageError, match="too large to decode"):
        decode_display(ds, inst, max_pixels=64_000_000)


def test_bits_stored_over_bits_allocated_is_refused() -> None:
    ds = make_cxr_dataset(300, 300)
    ds.BitsStored = 20
    with pytest.raises(UnsupportedImageError, match="Bits Stored 20"):
        decode_display(ds, CxrInstance.from_dataset(ds), max_pixels=10**8)
