"""Eligibility of an instance for the chest radiograph models, as declarative rules with reasons.

Decided on the header alone, before any pixel is decoded, so a corrupt CT is ``ineligible`` (it was
never going to be screened) while a corrupt chest radiograph is ``failed``. Each rule has an id, so
audits can count refusals by rule; reasons quote only allow-listed coded values (Modality, Body Part,
View Position, Photometric Interpretation, sizes, SOP Class names), never free text or patient data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .instance import CxrInstance
from .terms import BODY_PARTS, MODALITIES, VIEW_POSITIONS, shown

__all__ = ["CHEST_RADIOGRAPH_RULES", "Eligibility", "Rule", "evaluate"]

#: SOP classes of projection radiographs (CR, DX for presentation/processing, DX mammo excluded).
RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (digitised films; Modality still checked)
    }
)
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "CHEST_TO_ABDOMEN", "TORSO"})
FRONTAL_VIEWS = frozenset({"PA", "AP", "APS", "PAS", "AP SUPINE", "AP ERECT"})
MIN_SIDE = 256


@dataclass(frozen=True, slots=True)
class Rule:
    """``check`` returns ``None`` when the instance passes, else the reason it does not."""

    rule_id: str
    description: str
    check: Callable[[CxrInstance], str | None]


@dataclass(frozen=True, slots=True)
class Eligibility:
    ok: bool
    reasons: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = field(default=())

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) if self.reasons else None


def _is_image_object(i: CxrInstance) -> str | None:
    if i.sop_class_uid and i.sop_class_uid not in RADIOGRAPH_SOP_CLASSES:
        name = i.sop_class_name or "an unknown SOP class"
        if not i.has_pixel_data:
            return f"not an image: {name}"
        return f"not a projection radiograph object: {name}"
    if not i.has_pixel_data:
        return "not an image: no Pixel Data"
    return None


def _modality(i: CxrInstance) -> str | None:
    if i.modality in ("CR", "DX"):
        return None
    return f"not a chest radiograph: Modality {shown(i.modality, MODALITIES)}"


def _chest(i: CxrInstance) -> str | None:
    if i.body_part_examined in CHEST_BODY_PARTS:
        return None
    if i.body_part_examined is None and i.described_as_chest:
        return None
    if i.body_part_examined is None:
        return "not a chest radiograph: Body Part Examined missing and descriptions do not say chest"
    return f"not a chest radiograph: Body Part Examined {shown(i.body_part_examined, BODY_PARTS)}"


def _frontal(i: CxrInstance) -> str | None:
    if i.view_position is None or i.view_position in FRONTAL_VIEWS:
        return None
    return f"not a frontal view: View Position {shown(i.view_position, VIEW_POSITIONS)}"


def _greyscale(i: CxrInstance) -> str | None:
    if i.photometric_interpretation in ("MONOCHROME1", "MONOCHROME2") and (i.samples_per_pixel or 1) == 1:
        return None
    photometric = i.photometric_interpretation
    known = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "MONOCHROME1",
                            "MONOCHROME2", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK")
    return f"colour image ({photometric if known else 'Photometric Interpretation not a defined term'}); " \
           "greyscale expected"


def _size(i: CxrInstance) -> str | None:
    if i.rows is None or i.columns is None:
        return "image size missing (Rows/Columns)"
    if min(i.rows, i.columns) < MIN_SIDE:
        return f"image too small ({i.rows}x{i.columns}); at least {MIN_SIDE} pixels a side expected"
    return None


CHEST_RADIOGRAPH_RULES: tuple[Rule, ...] = (
    Rule("image-object", "an image object of a radiograph SOP class, with Pixel Data", _is_image_object),
    Rule("modality", "Modality CR or DX", _modality),
    Rule("body-part", "Body Part Examined is chest (or, when absent, a description says chest)", _chest),
    Rule("frontal-view", "View Position PA or AP (or absent)", _frontal),
    Rule("greyscale", "MONOCHROME1 or MONOCHROME2, one sample per pixel", _greyscale),
    Rule("min-size", f"at least {MIN_SIDE} pixels a side", _size),
)


def evaluate(instance: CxrInstance, rules: Sequence[Rule] = CHEST_RADIOGRAPH_RULES) -> Eligibility:
    """Apply ``rules`` in order; the first object-level refusal stops the rest (its reason is enough)."""
    reasons: list[str] = []
    ids: list[str] = []
    for rule in rules:
        reason = rule.check(instance)
        if reason is not None:
            reasons.append(reason)
            ids.append(rule.rule_id)
            if rule.rule_id in ("image-object", "modality"):
                break
    return Eligibility(ok=not reasons, reasons=tuple(reasons), rule_ids=tuple(ids))
