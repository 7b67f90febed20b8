"""DICOM outputs of one screened instance (contract 4), built with highdicom:

- Secondary Capture: the radiograph with the heatmap burned in, the legend and the banner
  "AI result — second reader — not for primary diagnosis" (also in Image Comments);
- Segmentation, FRACTIONAL (PROBABILITY): one segment per finding code with a heatmap (negative
  findings too), referencing the source image; none when no finding has a heatmap on the image
  (every model outside its scope there);
- Comprehensive 3D SR, TID 1500: the probability of every finding and the study priority score
  (image-level measurements), and one planar ROI per flagged region (SCOORD polyline in image
  coordinates, column then row) with the finding and its probability. A finding whose model does
  not apply to the image (outside its scope) has no probability: its qualitative evaluation is
  "Not applicable" (SCT 385432009), never "Absent", with the reason as a comment.

Every object carries the algorithm name and version, the model's Device UID in Contributing
Equipment, a series description marking it as an AI result, and deterministic UIDs
(:mod:`.provenance`). Each reads back with highdicom and passes ``dciodvfy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ..dicom.io import pydicom_warnings_caught
from ..errors import OutputEncodingError
from ..explain.regions import Region
from ..scoring.priority import FindingResult, Priority
from .overlay import BANNER, render_overlay
from .provenance import MANUFACTURER, Provenance, output_uid, sanitised_source

__all__ = ["FINDING_CODES", "RegionOutput", "build_outputs"]

#: Finding codes → SNOMED CT concepts (unknown codes fall back to a private scheme).
FINDING_CODES = {
    "pneumonia": CodedConcept("233604007", "SCT", "Pneumonia"),
    "nodule": CodedConcept("27925004", "SCT", "Nodule"),
}
_PRIVATE = "99SECONDREADER"
_PROBABILITY = CodedConcept("PROB", _PRIVATE, "Probability of finding")
_PRIORITY = CodedConcept("PRIORITY", _PRIVATE, "Second-review priority score")
_NO_UNITS = CodedConcept("1", "UCUM", "no units")
_SCORE = CodedConcept("{score}", "UCUM", "score")
_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
_NOT_APPLICABLE = CodedConcept("385432009", "SCT", "Not applicable")
_COMMENT = CodedConcept("121106", "DCM", "Comment")


def finding_concept(code: str) -> CodedConcept:
    return FINDING_CODES.get(code, CodedConcept(code.upper()[:16], _PRIVATE, code))


@dataclass(frozen=True, slots=True)
class RegionOutput:
    region_id: str
    region: Region
    probability: float


def _orientation(source: Dataset) -> tuple[str, str]:
    value = source.get("PatientOrientation")
    if value and len(value) == 2:
        return (str(value[0]), str(value[1]))
    # Frontal chest radiographs are displayed facing the patient: columns run to the patient's
    # left, rows to the feet.
    return ("L", "F")


def build_outputs(
    source: Dataset,
    *,
    display: np.ndarray,
    heats: dict[str, np.ndarray],
    findings: Sequence[FindingResult],
    regions: Sequence[RegionOutput],
    priority: Priority,
    provenance: Provenance,
) -> dict[str, Dataset]:
    """``{"sc", "seg", "sr"}`` datasets for one single-frame source instance (no ``seg`` when
    ``heats`` is empty).

    ``display``: float32 (rows, cols) in [0, 1] (bright bone); ``heats``: per finding code, float32
    (rows, cols) in [0, 1] on the same grid; ``findings`` as they stand on this instance (not
    applicable where its model's scope leaves it out).
    """
    if int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise OutputEncodingError("DICOM outputs are made for single-frame images only")
    src = sanitised_source(source)
    sop = str(src.SOPInstanceUID)
    study = str(src.StudyInstanceUID)
    models = provenance.models
    try:
        # highdicom and pydicom warn about odd header values by quoting them (a patient's name):
        # those texts must never reach a log.
        with pydicom_warnings_caught():
            outputs = {"sc": _secondary_capture(src, display, heats, findings, provenance, study, sop, models)}
            if heats:
                outputs["seg"] = _segmentation(src, heats, provenance, study, sop, models)
            outputs["sr"] = _report(src, findings, regions, priority, provenance, study, sop, models)
            return outputs
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputEncodingError(f"a DICOM output could not be built ({type(exc).__name__})") from None


def _mark(ds: Dataset, kind: str, provenance: Provenance) -> Dataset:
    ds.SeriesDescription = provenance.series(kind)[1]
    if kind != "sr":
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the banner has em dashes
        ds.ImageComments = BANNER
    return ds


def _secondary_capture(src: Dataset, display: np.ndarray, heats: dict[str, np.ndarray],
                       findings: Sequence[FindingResult], provenance: Provenance, study: str, sop: str,
                       models: Sequence[object]) -> Dataset:
    combined = np.max(np.stack(list(heats.values())), axis=0) if heats else np.zeros_like(display)
    title = ", ".join(f"{f.code} {f.probability:.2f}" if f.probability is not None else f"{f.code} n/a"
                      for f in findings)
    image = render_overlay(display, combined, [], title=title)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    number, _ = provenance.series("sc")
    sc = hd.sc.SCImage.from_ref_dataset(
        src, rgb, "RGB", 8, "PATIENT",
        series_instance_uid=output_uid("sc", study, provenance.models, level="series"),
        series_number=number, sop_instance_uid=output_uid("sc", sop, provenance.models), instance_number=1,
        manufacturer=MANUFACTURER, patient_orientation=_orientation(src),
        contributing_equipment=provenance.contributing_equipment(),
    )
    sc.Laterality = ""
    return _mark(sc, "sc", provenance)


def _segmentation(src: Dataset, heats: dict[str, np.ndarray], provenance: Provenance, study: str, sop: str,
                  models: Sequence[object]) -> Dataset:
    codes_in_order = sorted(heats)
    if not codes_in_order:
        raise ValueError("no heatmaps to encode")
    pixels = np.stack([np.clip(heats[c], 0.0, 1.0) for c in codes_in_order], axis=-1)[None].astype(np.float32)
    algorithm = provenance.algorithm_sequence()
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=code,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=finding_concept(code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        )
        for i, code in enumerate(codes_in_order)
    ]
    number, _ = provenance.series("seg")
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=descriptions,
        series_instance_uid=output_uid("seg", study, provenance.models, level="series"), series_number=number,
        sop_instance_uid=output_uid("seg", sop, provenance.models), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=provenance.name[:64],
        software_versions=provenance.version, device_serial_number=provenance.device_uid[:64],
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=255,
        omit_empty_frames=False, content_label="AI_HEATMAP",
        content_description="AI RESULT - NOT FOR PRIMARY DIAGNOSIS",
        contributing_equipment=provenance.contributing_equipment(),
    )
    seg.PatientOrientation = list(_orientation(src))
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in shared and "SliceThickness" not in shared.PixelMeasuresSequence[0]:
        # A projection radiograph has no slice thickness; highdicom writes Pixel Measures without it
        # but cannot read such a SEG back. The macro is optional without a Frame of Reference.
        del shared.PixelMeasuresSequence
    return _mark(seg, "seg", provenance)


def _report(src: Dataset, findings: Sequence[FindingResult], regions: Sequence[RegionOutput], priority: Priority,
            provenance: Provenance, study: str, sop: str, models: Sequence[object]) -> Dataset:
    algorithm = provenance.sr_algorithm()
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(src)
    image_level = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=output_uid("sr", sop + "/image", provenance.models),
                                                     identifier="image"),
        source_images=[source_image],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=_PRIORITY, value=float(priority.score), unit=_SCORE, algorithm_id=algorithm),
            *[hd.sr.Measurement(name=CodedConcept(_PROBABILITY.value, _PRIVATE, f"Probability of {f.code}"),
                                value=round(f.probability, 4), unit=_NO_UNITS, algorithm_id=algorithm)
              for f in findings if f.probability is not None],
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=finding_concept(f.code),
                value=_NOT_APPLICABLE if not f.applicable else codes.SCT.Present if f.positive else codes.SCT.Absent)
            for f in findings
        ],
    )
    for f in findings:
        if not f.applicable:  # why, as a comment in the same group (the reason holds no patient data but the age)
            image_level[0].ContentSequence.append(hd.sr.TextContentItem(
                name=_COMMENT, value=f"{f.code} not applicable: {f.not_applicable_reason}"[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    rois = []
    for r in regions:
        r0, c0, r1, c1 = r.region.bbox
        polyline = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)
        rois.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=output_uid("sr", f"{sop}/{r.region_id}", provenance.models), identifier=r.region_id),
            referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                                                source_image=hd.sr.SourceImageForRegion.from_source_image(src)),
            finding_type=finding_concept(r.region.finding),
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=_PROBABILITY, value=round(r.probability, 4), unit=_NO_UNITS,
                                            algorithm_id=algorithm)],
        ))
    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=provenance.device_uid, name=provenance.name[:64], manufacturer_name=MANUFACTURER,
                model_name=provenance.version[:64],
            ),
        )
    )
    report = hd.sr.MeasurementReport(observation_context=observer, procedure_reported=_CHEST_XRAY,
                                     imaging_measurements=[image_level, *rois])
    number, _ = provenance.series("sr")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[src], content=report,
        series_instance_uid=output_uid("sr", study, provenance.models, level="series"), series_number=number,
        sop_instance_uid=output_uid("sr", sop, provenance.models), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=provenance.series("sr")[1],
    )
    sr.ContributingEquipmentSequence = provenance.contributing_equipment()
    return _mark(sr, "sr", provenance)
