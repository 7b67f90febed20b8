"""Synthetic DICOM generators for tests (every patient attribute is the canary)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

from .conftest import CANARY_ID, CANARY_NAME

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
CT_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")


def chest_phantom(rows: int = 512, cols: int = 512, *, lesion_at: tuple[int, int] | None = None,
                  seed: int = 0) -> np.ndarray:
    """A smooth chest-like picture in [0, 1] (two dark lungs in a bright body), float64."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    rr, cc = (r - rows / 2) / (rows / 2), (c - cols / 2) / (cols / 2)
    body = np.exp(-((rr / 0.95) ** 8 + (cc / 0.9) ** 8))
    lungs = np.exp(-(((rr + 0.05) / 0.6) ** 2 + ((np.abs(cc) - 0.4) / 0.25) ** 2) * 2)
    img = 0.15 + 0.7 * body - 0.45 * lungs + 0.02 * rng.standard_normal((rows, cols))
    if lesion_at is not None:
        y, x = lesion_at
        img += 0.3 * np.exp(-(((r - y) ** 2 + (c - x) ** 2) / (2 * (rows / 30) ** 2)))
    return np.clip(img, 0.0, 1.0)


def make_cxr_dataset(
    rows: int = 512,
    cols: int = 512,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    bits_allocated: int = 16,
    modality: str = "DX",
    body_part: str | None = "CHEST",
    view_position: str | None = "PA",
    sop_class: UID = DX_STORAGE,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    frames: int = 1,
    pixels: np.ndarray | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    spacing: tuple[float, float] | None = (0.2, 0.2),
    lesion_at: tuple[int, int] | None = None,
    value_bits: int | None = None,
    patient_age: str | None = "004Y",
) -> FileDataset:
    """A chest radiograph as a pydicom dataset (Part 10 ready), patient attributes = canary.

    The patient is a child (Patient's Age ``patient_age``, 4 years by default), inside the shipped
    cxr-pneumonia model's scope (children aged 1-5) and outside cxr-nodule's (adults): give an
    adult's age (``"053Y"``) for the nodule model, ``None`` for an unknown age (the birth date
    alone, without a study date, gives none).

    ``pixels`` (float in [0, 1], bright bone) defaults to :func:`chest_phantom`; it is stored with
    ``bits_stored`` bits (inverted for MONOCHROME1), optionally through ``rescale`` = (slope,
    intercept) so that stored * slope + intercept gives the display values scaled to ``value_bits``
    (default ``bits_stored``).
    """
    if pixels is None:
        pixels = chest_phantom(rows, cols, lesion_at=lesion_at)
    top = (1 << (value_bits or bits_stored)) - 1
    display = pixels if photometric == "MONOCHROME2" else 1.0 - pixels
    values = np.round(display * top)
    if rescale is not None:
        slope, intercept = rescale
        values = np.round((values - intercept) / slope)
    stored = values.astype(np.uint16 if bits_allocated == 16 else np.uint8)
    if frames > 1:
        stored = np.stack([stored] * frames)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = CANARY_NAME
    ds.PatientID = CANARY_ID
    ds.PatientBirthDate = "19010101"
    if patient_age is not None:
        ds.PatientAge = patient_age
    ds.AccessionNumber = "CANARYACC"
    ds.StudyDescription = "CANARY^PHI chest study"
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if spacing is not None:
        ds.ImagerPixelSpacing = list(spacing)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    if transfer_syntax == ExplicitVRBigEndian:
        ds.PixelData = stored.byteswap().tobytes() if bits_allocated == 16 else stored.tobytes()
        meta.TransferSyntaxUID = ExplicitVRBigEndian
    elif transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, stored, encoding_plugin="pylibjpeg")
    return ds


def to_bytes(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    little = ds.file_meta.TransferSyntaxUID != ExplicitVRBigEndian
    ds.set_original_encoding(False, little, ds.get("SpecificCharacterSet", "ISO_IR 100"))
    dcmwrite(buffer, ds, enforce_file_format=True, little_endian=little, implicit_vr=False)
    return buffer.getvalue()


def with_patient_age(source: Path, age: str) -> bytes:
    """A real DICOM file's bytes with Patient's Age set to ``age`` (its pixels as they were): the
    shipped sample chest RG1 is an adult's (64 years), outside cxr-pneumonia's scope (children aged
    1-5); tests of routing and discordance that need that model to apply give it a child's age."""
    import pydicom

    ds = pydicom.dcmread(source)
    ds.PatientAge = age
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write(ds: FileDataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ds))
    return path
