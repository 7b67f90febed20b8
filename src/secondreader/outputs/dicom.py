"""DICOM outputs of one screened instance (contract 4), built with highdicom and made for the
viewers radiologists use (OHIF 3.x against a DICOMweb PACS is tested in a real browser):

- Secondary Capture: the radiograph with the heat burned in on an absolute scale tied to each
  finding's operating point (a negative study looks negative), the legend, and the banner
  "AI result — second reader — not for primary diagnosis" with each finding, its probability and
  "positive" or "negative" (also in Image Comments). It references its source image (Source Image
  Sequence, Derivation Description) and says its annotation is burned in.
- Segmentation, BINARY: one segment per finding with a heatmap on the image, holding the flagged
  regions of a finding positive at its operating point (empty for a negative finding); none when
  no finding has a heatmap on the image (every model outside its scope there). The relative heat
  itself is on the Secondary Capture and in the viewer's layer: OHIF does not render FRACTIONAL
  segmentations, and a projection radiograph has no frame of reference for a Parametric Map.
- Comprehensive 3D SR, TID 1500: one planar ROI per flagged region (SCOORD polyline in image
  coordinates, column then row), its measurement named by finding ("Nodule probability", in
  percent) with the region's own probability; and the image-level results as TID 1500
  Qualitative Evaluations: per finding Present, Absent or "Not applicable" (SCT 385432009, with
  the reason), its probability against its operating point, and the study priority score. No
  measurement group without a region (OHIF 3 cannot show one and fails on it).

Each instance's objects are in series of their own (UIDs derived from the source instance),
numbered by the image's place in the study, so the objects of a two-image study never hide each other in a
viewer. Every object carries the algorithm name and version, the model's Device UID in
Contributing Equipment, a series description marking it as an AI result, the study description,
deterministic UIDs (:mod:`.provenance`) and, where it uses a private code, the declaration of the
private coding scheme. Codes and meanings come from :mod:`secondreader.vocabulary`. Each reads
back with highdicom and passes ``dciodvfy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from ..dicom.io import pydicom_warnings_caught
from ..errors import OutputEncodingError
from ..explain.regions import Region
from ..scoring.priority import FindingResult, Priority
from ..vocabulary import PRIVATE_SCHEME, coding_scheme_identification, private_code, term
from .overlay import BANNER, absolute_heat, render_overlay
from .provenance import MANUFACTURER, Provenance, output_uid, sanitised_source

__all__ = ["RegionOutput", "build_outputs", "finding_concept", "sc_title"]

_PERCENT = CodedConcept("%", "UCUM", "percent")
_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
_NOT_APPLICABLE = CodedConcept("385432009", "SCT", "Not applicable")
_COMMENT = CodedConcept("121106", "DCM", "Comment")
_QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: Who made the SEG's content (a Person Name: family^given, here the device's name and "AI").
_CONTENT_CREATOR = f"{MANUFACTURER}^AI"


def finding_concept(code: str) -> CodedConcept:
    """The SNOMED CT concept of a finding code (a private one for codes the vocabulary lacks)."""
    found = term(code)
    return CodedConcept(found.snomed, found.scheme, found.meaning)


def _probability_concept(code: str) -> CodedConcept:
    """The measurement a region's probability is: named by finding, so a viewer's label reads
    "Nodule probability: 92.60 %"."""
    return CodedConcept(private_code(f"P-{code}"), PRIVATE_SCHEME, f"{term(code).display} probability")


@dataclass(frozen=True, slots=True)
class RegionOutput:
    """A flagged region on one instance, with the region's own probability (``regions[].score``)."""

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


def _status(f: FindingResult) -> str:
    if not f.applicable:
        return "n/a"
    word = "positive" if f.positive else "negative"
    return word if f.mode == "live" else f"{word} (shadow)"


def sc_title(findings: Sequence[FindingResult]) -> str:
    """The banner's result line: each finding, its probability and positive or negative."""
    return ", ".join(
        f"{term(f.code).display} {f.probability:.2f} {_status(f)}" if f.probability is not None
        else f"{term(f.code).display} n/a" for f in findings)


def build_outputs(
    source: Dataset,
    *,
    display: np.ndarray,
    heats: dict[str, np.ndarray],
    findings: Sequence[FindingResult],
    regions: Sequence[RegionOutput],
    priority: Priority,
    provenance: Provenance,
    instance_number: int = 1,
) -> dict[str, Dataset]:
    """``{"sc", "seg", "sr"}`` datasets for one single-frame source instance (no ``seg`` when
    ``heats`` is empty).

    ``display``: float32 (rows, cols) in [0, 1] (bright bone); ``heats``: per finding code, float32
    (rows, cols) in [0, 1] on the same grid; ``findings`` as they stand on this instance (not
    applicable where its model's scope leaves it out); ``regions``: the flagged regions on this
    instance; ``instance_number``: the image's place in the study (1-based), which the outputs
    take as their Instance Number.
    """
    if int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise OutputEncodingError("DICOM outputs are made for single-frame images only")
    if instance_number < 1:
        raise ValueError("instance_number is 1-based")
    src = sanitised_source(source)
    sop = str(src.SOPInstanceUID)
    try:
        # highdicom and pydicom warn about odd header values by quoting them (a patient's name):
        # those texts must never reach a log.
        with pydicom_warnings_caught():
            outputs = {"sc": _secondary_capture(src, display, heats, findings, provenance, sop, instance_number)}
            if heats:
                outputs["seg"] = _segmentation(src, heats, findings, regions, provenance, sop, instance_number)
            outputs["sr"] = _report(src, findings, regions, priority, provenance, sop, instance_number)
            for dataset in outputs.values():
                _describe_study(dataset, src)
            return outputs
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputEncodingError(f"a DICOM output could not be built ({type(exc).__name__})") from None


def _describe_study(ds: Dataset, src: Dataset) -> None:
    description = src.get("StudyDescription")
    if description and "StudyDescription" not in ds:
        ds.StudyDescription = description


def _mark(ds: Dataset, kind: str, provenance: Provenance) -> Dataset:
    ds.SeriesDescription = provenance.series(kind)[1]
    if kind != "sr":
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the banner has em dashes
        ds.ImageComments = BANNER
    return ds


def _declare_private_scheme(ds: Dataset) -> None:
    ds.CodingSchemeIdentificationSequence = DicomSequence([coding_scheme_identification()])


def _series_uid(kind: str, sop: str, provenance: Provenance) -> str:
    """One series per source instance and output type: a viewer lists every image's object."""
    return output_uid(kind, sop, provenance.models, level="series")


def _secondary_capture(src: Dataset, display: np.ndarray, heats: dict[str, np.ndarray],
                       findings: Sequence[FindingResult], provenance: Provenance, sop: str,
                       instance_number: int) -> Dataset:
    # Heat of live, applicable findings only: a shadow model's heat is not shown to readers.
    drawn = [(heats[f.code], float(f.probability), f.operating_point) for f in findings
             if f.applicable and f.probability is not None and f.mode == "live" and f.code in heats]
    combined = absolute_heat(drawn) if drawn else np.zeros_like(display)
    image = render_overlay(display, combined, [], title=sc_title(findings), absolute=True)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    number, _ = provenance.series("sc")
    sc = hd.sc.SCImage.from_ref_dataset(
        src, rgb, "RGB", 8, "PATIENT",
        series_instance_uid=_series_uid("sc", sop, provenance), series_number=number,
        sop_instance_uid=output_uid("sc", sop, provenance.models), instance_number=instance_number,
        manufacturer=MANUFACTURER, patient_orientation=_orientation(src),
        contributing_equipment=provenance.contributing_equipment(),
    )
    # General Series Laterality (2C) is absent for an unpaired body part; the body part examined
    # says which one this is (and lets a validator tell the condition).
    if "Laterality" in sc:
        del sc.Laterality
    if src.get("BodyPartExamined"):
        sc.BodyPartExamined = src.BodyPartExamined
    sc.BurnedInAnnotation = "YES"
    reference = Dataset()
    reference.ReferencedSOPClassUID = src.SOPClassUID
    reference.ReferencedSOPInstanceUID = sop
    sc.SourceImageSequence = DicomSequence([reference])
    sc.DerivationDescription = "AI heatmap and result banner burned into a copy of the source image"
    return _mark(sc, "sc", provenance)


def _region_mask(heat: np.ndarray, region: Region) -> np.ndarray:
    """The pixels of a flagged region: in its box, those at half its peak heat or more (how the
    region was found from a relative heatmap); never empty (the peak is in it)."""
    r0, c0, r1, c1 = region.bbox
    box = heat[r0:r1, c0:c1]
    mask = np.zeros(heat.shape, dtype=bool)
    inside = box >= 0.5 * float(box.max()) if box.size and float(box.max()) > 0 else np.ones(box.shape, bool)
    mask[r0:r1, c0:c1] = inside
    return mask


def _segmentation(src: Dataset, heats: dict[str, np.ndarray], findings: Sequence[FindingResult],
                  regions: Sequence[RegionOutput], provenance: Provenance, sop: str, instance_number: int) -> Dataset:
    codes_in_order = sorted(heats)
    if not codes_in_order:
        raise ValueError("no heatmaps to encode")
    by_code = {f.code: f for f in findings}
    masks = []
    for code in codes_in_order:
        mask = np.zeros(heats[code].shape, dtype=bool)
        for r in regions:
            if r.region.finding == code:
                mask |= _region_mask(heats[code], r.region)
        masks.append(mask)
    pixels = np.stack(masks, axis=-1)[None].astype(np.uint8)
    algorithm = provenance.algorithm_sequence()
    descriptions = []
    for i, code in enumerate(codes_in_order):
        f = by_code.get(code)
        label = f"{term(code).display} AI {_status(f) if f is not None else 'n/a'}"
        if f is not None and f.probability is not None:
            label += f" p={f.probability:.2f}"
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=label[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=finding_concept(code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        ))
    number, _ = provenance.series("seg")
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_series_uid("seg", sop, provenance), series_number=number,
        sop_instance_uid=output_uid("seg", sop, provenance.models), instance_number=instance_number,
        manufacturer=MANUFACTURER, manufacturer_model_name=provenance.name[:64],
        software_versions=provenance.version, device_serial_number=provenance.device_uid[:64],
        omit_empty_frames=False, content_label="AI_REGIONS",
        content_description="AI RESULT - NOT FOR PRIMARY DIAGNOSIS",
        content_creator_name=_CONTENT_CREATOR,
        contributing_equipment=provenance.contributing_equipment(),
    )
    seg.PatientOrientation = list(_orientation(src))
    _fixed_dimension_organization(seg, output_uid("seg", sop, provenance.models, level="dimension-organization"))
    _pixel_measures(seg, src)
    if any(d.segmented_property_type.scheme_designator == PRIVATE_SCHEME for d in descriptions):
        _declare_private_scheme(seg)
    return _mark(seg, "seg", provenance)


def _fixed_dimension_organization(seg: Dataset, uid: str) -> None:
    """The SEG's Dimension Organization UID, derived like its other UIDs instead of highdicom's
    random one: a study screened again (another replica after a crash, a re-run) gives the same
    object under the same SOP Instance UID, not one that differs in this UID alone."""
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = uid


def _pixel_measures(seg: Dataset, src: Dataset) -> None:
    """Pixel Measures in the shared functional groups, which OHIF reads unconditionally: the
    source's pixel spacing (Imager Pixel Spacing for projection radiographs; 1 mm when it has
    none) and a nominal slice thickness of 1 mm (a projection has none, but highdicom cannot read
    a SEG back without it)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    spacing = src.get("PixelSpacing") or src.get("ImagerPixelSpacing") or [1.0, 1.0]
    measures = Dataset()
    measures.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = DicomSequence([orientation])


def _report(src: Dataset, findings: Sequence[FindingResult], regions: Sequence[RegionOutput], priority: Priority,
            provenance: Provenance, sop: str, instance_number: int) -> Dataset:
    algorithm = provenance.sr_algorithm()
    rois = []
    for r in regions:
        r0, c0, r1, c1 = r.region.bbox
        polyline = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)
        rois.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=output_uid("sr", f"{sop}/{r.region_id}", provenance.models),
                identifier=f"{term(r.region.finding).display} region {r.region_id.rsplit('-', 1)[-1]} (AI)"),
            referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                                                source_image=hd.sr.SourceImageForRegion.from_source_image(src)),
            finding_type=finding_concept(r.region.finding),
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=_probability_concept(r.region.finding),
                                            value=round(100.0 * r.probability, 2), unit=_PERCENT,
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
    # highdicom wants at least one measurement group; TID 1500 wants one of Imaging Measurements,
    # Derived Imaging Measurements or Qualitative Evaluations. An image with no flagged region
    # has only the last: the placeholder group is taken out again below.
    placeholder = not rois
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]
    groups = list(rois) or [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="image"), algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)])]
    report = hd.sr.MeasurementReport(observation_context=observer, procedure_reported=_CHEST_XRAY,
                                     imaging_measurements=groups, referenced_images=_library(src))
    root = report[0]
    if placeholder:
        root.ContentSequence = [item for item in root.ContentSequence
                                if item.ConceptNameCodeSequence[0].CodeValue != codes.DCM.ImagingMeasurements.value]
    root.ContentSequence.append(_qualitative_evaluations(findings, priority))
    number, _ = provenance.series("sr")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[src], content=root,
        series_instance_uid=_series_uid("sr", sop, provenance), series_number=number,
        sop_instance_uid=output_uid("sr", sop, provenance.models), instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=provenance.series("sr")[1],
    )
    sr.ContributingEquipmentSequence = provenance.contributing_equipment()
    _declare_private_scheme(sr)
    return _mark(sr, "sr", provenance)


def _library(src: Dataset) -> list[Dataset] | None:
    """The source as the Image Library describes it (TID 1601), or None when its pixel spacing is
    unknown: a projection radiograph's entry states its imager pixel spacing (the detector's, else
    the calibrated Pixel Spacing) and its patient orientation (defaulted as the outputs display it)."""
    spacing = src.get("ImagerPixelSpacing") or src.get("PixelSpacing")
    if not spacing or len(spacing) != 2:
        return None
    entry = Dataset()
    entry.update(src)
    entry.ImagerPixelSpacing = [float(spacing[0]), float(spacing[1])]
    if not entry.get("PatientOrientation"):
        entry.PatientOrientation = list(_orientation(src))
    return [entry]


def _qualitative_evaluations(findings: Sequence[FindingResult], priority: Priority) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: per finding Present / Absent / Not applicable with a comment giving its
    probability against its operating point (or why it does not apply), and the priority score."""
    container = hd.sr.ContainerContentItem(name=_QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    items: list[hd.sr.CodeContentItem | hd.sr.TextContentItem] = []
    for f in findings:
        value = _NOT_APPLICABLE if not f.applicable else codes.SCT.Present if f.positive else codes.SCT.Absent
        items.append(hd.sr.CodeContentItem(name=finding_concept(f.code), value=value,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        if not f.applicable:  # the reason holds no patient data but the age
            text = f"{term(f.code).display}: not applicable ({f.not_applicable_reason})"
        else:
            text = (f"{term(f.code).display}: probability {100 * (f.probability or 0.0):.1f} % against an "
                    f"operating point of {100 * f.operating_point:.1f} %, {_status(f)}")
        items.append(hd.sr.TextContentItem(name=_COMMENT, value=text[:1024],
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    items.append(hd.sr.TextContentItem(
        name=_COMMENT, value=f"Second-review priority score: {priority.score} ({priority.route.value})",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container
