"""Who made an AI result, and its UIDs, in one place (contract 4).

Output UIDs are derived deterministically from the source SOP Instance UID, the model version and
the output type (``generate_uid(entropy_srcs=...)``), so a re-sent result replaces itself in the
PACS instead of duplicating. Series UIDs are derived the same way at series level, so each source
image's output of one kind has a series of its own (a viewer such as OHIF lists one SEG or SR per
series: objects of several images in one series would hide each other).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from .. import __version__
from ..model.card import ModelCard

__all__ = ["MANUFACTURER", "OUTPUT_TYPES", "Provenance", "SeriesSettings", "is_own_result", "output_uid",
           "sanitised_source"]

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("sc", "seg", "sr")
#: The Manufacturer of every object secondreader writes; how its own results are recognised.
MANUFACTURER = "secondreader"


def is_own_result(ds: Dataset) -> bool:
    """Whether ``ds`` is one of secondreader's own outputs (coming back from a PACS)."""
    return str(ds.get("Manufacturer", "") or "") == MANUFACTURER
_KIND_NAMES = {"sc": "overlay", "seg": "regions SEG", "sr": "report"}


@dataclass(frozen=True, slots=True)
class SeriesSettings:
    """Series numbers and the description prefix of the outputs (from Settings at the entry point)."""

    sc: int = 9901
    seg: int = 9902
    sr: int = 9903
    description_prefix: str = "AI RESULT"

    def __post_init__(self) -> None:
        if not self.description_prefix.strip():
            raise ValueError("the series description prefix must mark outputs as AI results")


def output_uid(kind: str, source_uid: str, models: Sequence[ModelCard], *, level: str = "instance") -> str:
    if kind not in OUTPUT_TYPES:
        raise ValueError(f"output type must be one of {OUTPUT_TYPES}, not {kind!r}")
    return str(generate_uid(entropy_srcs=["secondreader", level, kind, source_uid,
                                          *sorted(f"{m.ref}/{m.device_uid}" for m in models)]))


@dataclass(frozen=True, slots=True)
class Provenance:
    """The algorithm identification and equipment of one set of outputs."""

    models: tuple[ModelCard, ...]
    series_settings: SeriesSettings = SeriesSettings()

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("outputs need at least one model")

    @property
    def name(self) -> str:
        return "secondreader " + "+".join(m.name for m in self.models)

    @property
    def version(self) -> str:
        return "+".join(m.version for m in self.models)

    @property
    def device_uid(self) -> str:
        return self.models[0].device_uid

    def algorithm_sequence(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(name=self.name, version=self.version,
                                                  family=codes.cid7162.ArtificialIntelligence)

    def sr_algorithm(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version)

    def contributing_equipment(self) -> list[hd.ContributingEquipment]:
        return [hd.ContributingEquipment(
            manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.name[:64], software_versions=f"{__version__} {self.version}",
            device_serial_number=self.device_uid[:64],
        )]

    def series(self, kind: str) -> tuple[int, str]:
        number = int(getattr(self.series_settings, kind))
        description = f"{self.series_settings.description_prefix} {_KIND_NAMES[kind]} (secondreader)"
        return number, description[:64]


_TEXT_VRS = frozenset({"AS", "CS", "DA", "DT", "LO", "PN", "SH", "TM"})
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "AccessionNumber", "ReferringPhysicianName")


def sanitised_source(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` in which every top-level patient, study and general attribute (groups
    0008, 0010, 0020) that outputs may copy is valid for its VR: an invalid one is emptied when the
    outputs need it present (type 2), else dropped. Values are never logged, only the keyword."""
    out = Dataset()
    out.update(ds)
    out.file_meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for element in list(out):
            if element.tag.group not in (0x0008, 0x0010, 0x0020) or element.VR not in _TEXT_VRS:
                continue
            values = element.value if isinstance(element.value, (list, tuple, MultiValue)) else [element.value]
            try:
                for value in values:
                    validate_value(element.VR, str(value) if value is not None else "", validation_mode=2)
            except (ValueError, TypeError, KeyError):
                logger.warning("source %s is invalid for its VR; not copied into the outputs",
                               element.keyword or "a private attribute")
                if element.keyword in _TYPE2:
                    setattr(out, element.keyword, "")
                else:
                    del out[element.tag]
        for keyword in _TYPE2:
            if keyword not in out:
                setattr(out, keyword, "")
    return out
