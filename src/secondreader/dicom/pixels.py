"""Stored pixel values → float32 in display units, with every check made before allocating.

The chain follows DICOM PS3.3 C.11: Modality LUT (Rescale Slope/Intercept or LUT), then the VOI
stage (VOI LUT Sequence, else the first Window Center/Width with its VOI LUT Function). When the
header has no usable VOI, the frames are returned in modality units with ``windowed=False`` and
preprocessing applies a percentile window. MONOCHROME1 inversion happens after windowing
(``invert=True`` tells preprocessing to do it), so MONOCHROME1 and MONOCHROME2 copies of one
picture give the same model input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from ..errors import CorruptPixelDataError, UnsupportedImageError
from .gpu_decode import decode_frames as gpu_decode_frames
from .gpu_decode import enabled as gpu_decoding_enabled
from .instance import CxrInstance
from .io import HEADER_ERRORS, pydicom_warnings_caught

__all__ = ["DisplayImage", "decode_display"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DisplayImage:
    """Decoded frames.

    ``frames``: float32, shape (frames, rows, columns). In [0, 1] when ``windowed`` (header VOI
    applied), else in modality units (after Rescale Slope/Intercept). ``invert``: MONOCHROME1, to
    be inverted after windowing.
    """

    frames: np.ndarray
    windowed: bool
    invert: bool


DECODE_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError, *HEADER_ERRORS)


def _check_before_decoding(ds: Dataset, inst: CxrInstance, max_pixels: int) -> None:
    if not inst.has_pixel_data:
        raise UnsupportedImageError("no Pixel Data")
    if inst.rows is None or inst.columns is None or inst.rows <= 0 or inst.columns <= 0:
        raise UnsupportedImageError("Rows/Columns missing or zero")
    if inst.bits_allocated not in (1, 8, 16, 32):
        raise UnsupportedImageError(f"Bits Allocated {inst.bits_allocated} is not 8, 16 or 32")
    if inst.bits_stored is None or not 1 <= inst.bits_stored <= inst.bits_allocated:
        raise UnsupportedImageError(
            f"Bits Stored {inst.bits_stored} is not between 1 and Bits Allocated {inst.bits_allocated}"
        )
    if inst.number_of_frames < 1:
        raise UnsupportedImageError(f"Number of Frames {inst.number_of_frames} is not positive")
    pixels = inst.rows * inst.columns * inst.number_of_frames
    if pixels > max_pixels:
        raise UnsupportedImageError(
            f"image is too large to decode: {inst.rows}x{inst.columns}x{inst.number_of_frames} pixels, "
            f"limit {max_pixels}"
        )
    ts = UID(inst.transfer_syntax_uid)
    if not ts.is_transfer_syntax:
        raise UnsupportedImageError("the File Meta Information names an unknown Transfer Syntax UID")
    if not ts.is_compressed:
        expected = pixels * (inst.samples_per_pixel or 1) * inst.bits_allocated // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise CorruptPixelDataError(
                f"pixel data is truncated: {actual} bytes of the {expected} that Rows, Columns, "
                "Bits Allocated and Number of Frames require"
            )


def _decode(ds: Dataset, inst: CxrInstance, gpu_decode: bool) -> np.ndarray:
    ts = UID(inst.transfer_syntax_uid)
    ts_name = ts.name if ts.name != str(ts) else "an unknown transfer syntax"
    gpu = gpu_decode_frames(ds, inst) if gpu_decode else None  # None: the CPU decoders below
    try:
        arr = ds.pixel_array if gpu is None else gpu
    except NotImplementedError:
        raise UnsupportedImageError(f"no decoder available for {ts_name}") from None
    except MemoryError:
        raise UnsupportedImageError("not enough memory to decode the image") from None
    except DECODE_ERRORS:
        if ts.is_compressed:
            raise CorruptPixelDataError(f"{ts_name} codestream is corrupt and cannot be decoded") from None
        raise CorruptPixelDataError("pixel data cannot be decoded (inconsistent with the header)") from None
    expected_frames = inst.number_of_frames
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.shape != (expected_frames, inst.rows, inst.columns):
        raise CorruptPixelDataError(
            f"decoded pixels have shape {tuple(arr.shape)}, header says "
            f"{expected_frames}x{inst.rows}x{inst.columns}"
        )
    return arr


def _linear_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to [0, 1]."""
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        y = (x - center) / width + 0.5
    else:  # LINEAR
        y = (x - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else (x > center - 0.5).astype(np.float32)
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or (hasattr(value, "__getitem__") and not isinstance(value, (str, bytes))):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _apply_voi(ds: Dataset, values: np.ndarray) -> np.ndarray | None:
    """Header VOI to [0, 1], or ``None`` when the header has no usable VOI."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        try:
            lut_item = ds.VOILUTSequence[0]
            lut = np.asarray(lut_item.LUTData, dtype=np.float64).ravel()
            out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float32)
            low, high = float(lut.min()), float(lut.max())
            if high > low:
                scaled: np.ndarray = np.clip((out - low) / (high - low), 0.0, 1.0).astype(np.float32)
                return scaled
        except HEADER_ERRORS:
            logger.warning("VOI LUT Sequence unusable; falling back to window or percentiles")
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        except HEADER_ERRORS:
            logger.warning("Window Center/Width unusable; falling back to percentiles")
            return None
        if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
            logger.warning("Window Width is not positive; falling back to percentiles")
            return None
        return _linear_window(values, center, width, function)
    return None


def decode_display(ds: Dataset, inst: CxrInstance, *, max_pixels: int, gpu_decode: bool | None = None) -> DisplayImage:
    """Decode ``ds`` to :class:`DisplayImage` (checks sizes before allocating).

    ``gpu_decode``: decode JPEG 2000 on the GPU when nvImageCodec and a CUDA device are present
    (:mod:`secondreader.dicom.gpu_decode`, falling back to the CPU); ``None`` takes the process
    setting (:func:`~secondreader.dicom.gpu_decode.configure`; on, where available, unless turned off).

    Raises
    ------
    UnsupportedImageError, CorruptPixelDataError
        With a reason naming what is wrong.
    """
    with pydicom_warnings_caught():
        return _decode_display(ds, inst, max_pixels, gpu_decoding_enabled() if gpu_decode is None else gpu_decode)


def _decode_display(ds: Dataset, inst: CxrInstance, max_pixels: int, gpu_decode: bool) -> DisplayImage:
    try:
        _check_before_decoding(ds, inst, max_pixels)
    except HEADER_ERRORS:
        raise CorruptPixelDataError("the Pixel Data element is malformed") from None
    stored = _decode(ds, inst, gpu_decode)
    try:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    except HEADER_ERRORS:
        raise UnsupportedImageError("Modality LUT / Rescale values are malformed") from None
    if not np.all(np.isfinite(values)):
        raise CorruptPixelDataError("pixel values are not finite after the Modality LUT")
    windowed = _apply_voi(ds, values)
    invert = inst.photometric_interpretation == "MONOCHROME1"
    if windowed is not None:
        return DisplayImage(frames=windowed, windowed=True, invert=invert)
    return DisplayImage(frames=values, windowed=False, invert=invert)
