"""``CxrInstance``: the allow-listed header fields of one DICOM instance.

This is the only object that leaves ``secondreader.dicom`` besides decoded pixels. It never holds
patient attributes (name, ID, birth date, accession number) or free text: descriptions are reduced
to a yes/no "described as chest" flag on the way in, and the birth date to the patient's age at
the study (:mod:`.age`), which the models' scopes need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..errors import NotDicomError
from .age import PatientAge, age_from_header
from .io import HEADER_ERRORS, pydicom_warnings_caught

__all__ = ["CxrInstance"]

_CHEST_WORDS = re.compile(r"\b(chest|thorax|thoracic|thx|cxr|lung|lungs|pulmonary|torax|thorax)\b", re.I)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return int(value)


def _raw(ds: Dataset, keyword: str) -> object:
    """An element's value, or None when it is absent or cannot be parsed (never raises)."""
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed optional value counts as absent
        return None


def _age(ds: Dataset) -> PatientAge | None:
    return age_from_header(_raw(ds, "PatientAge"), _raw(ds, "PatientBirthDate"),
                           *(_raw(ds, k) for k in ("StudyDate", "SeriesDate", "AcquisitionDate")))


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing, else ImagerPixelSpacing, as (row, column) mm; None if absent or zero."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and col > 0:
            return (row, col)
        return None  # present but zero or negative: spacing unknown (RG1 has 0)
    return None


@dataclass(frozen=True, slots=True)
class CxrInstance:
    """Header facts about one instance, safe to log except the UIDs (log ``study_key`` instead)."""

    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    sop_class_uid: str | None
    sop_class_name: str | None
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    described_as_chest: bool
    photometric_interpretation: str | None
    samples_per_pixel: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    pixel_spacing_mm: tuple[float, float] | None
    has_pixel_data: bool
    #: The order's identifier, to match a first-read report to its images. Not patient data, but
    #: an identifier all the same: kept out of ``repr``, logs and result JSON.
    accession_number: str | None = field(default=None, repr=False)
    #: The patient's age at the study (``None``: unknown), for the models' scopes. Patient data,
    #: though coarse: kept out of ``repr`` and logs; only a not-applicable reason shows it.
    patient_age: PatientAge | None = field(default=None, repr=False)

    @classmethod
    def from_dataset(cls, ds: Dataset, *, pixel_data_truncated: bool = False) -> CxrInstance:
        """Copy the allow-listed fields of ``ds``.

        ``pixel_data_truncated``: the file ended inside its Pixel Data (``ds`` is the header before
        it), so the instance counts as having pixels, which will fail to decode.

        Raises
        ------
        NotDicomError
            When a header element cannot be parsed (malformed values, truncated header).
        """
        try:
            with pydicom_warnings_caught():
                return cls._from_dataset(ds, pixel_data_truncated)
        except HEADER_ERRORS:
            raise NotDicomError("DICOM header has malformed values") from None

    @classmethod
    def _from_dataset(cls, ds: Dataset, pixel_data_truncated: bool) -> CxrInstance:
        meta = getattr(ds, "file_meta", Dataset())
        sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        sop_class_uid = str(sop_class) if sop_class else None
        sop_class_name = UID(sop_class_uid).name if sop_class_uid else None
        descriptions = " ".join(
            t for t in (_text(ds, k) for k in ("StudyDescription", "SeriesDescription",
                                               "ProtocolName", "RequestedProcedureDescription"))
            if t
        )
        body_part = _text(ds, "BodyPartExamined")
        frames = _int(ds, "NumberOfFrames") or 1
        return cls(
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID") or _text(meta, "MediaStorageSOPInstanceUID"),
            sop_class_uid=sop_class_uid,
            sop_class_name=sop_class_name if sop_class_name != sop_class_uid else None,
            transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
            modality=(_text(ds, "Modality") or "").upper() or None,
            body_part_examined=body_part.upper() if body_part else None,
            view_position=(_text(ds, "ViewPosition") or "").upper() or None,
            described_as_chest=bool(_CHEST_WORDS.search(descriptions)),
            photometric_interpretation=_text(ds, "PhotometricInterpretation"),
            samples_per_pixel=_int(ds, "SamplesPerPixel"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=frames,
            bits_allocated=_int(ds, "BitsAllocated"),
            bits_stored=_int(ds, "BitsStored"),
            pixel_representation=_int(ds, "PixelRepresentation"),
            pixel_spacing_mm=_spacing(ds),
            has_pixel_data=pixel_data_truncated
            or any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
            accession_number=_text(ds, "AccessionNumber"),
            patient_age=_age(ds),
        )
