from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from secondreader.dicom.eligibility import CHEST_RADIOGRAPH_RULES, evaluate
from secondreader.dicom.instance import CxrInstance

from ..factories import CT_STORAGE, make_cxr_dataset


def _eligibility(**kwargs):  # type: ignore[no-untyped-def]
    return evaluate(CxrInstance.from_dataset(make_cxr_dataset(rows=300, cols=300, **kwargs)))


def test_frontal_chest_dx_is_eligible() -> None:
    result = _eligibility()
    assert result.ok and result.reason is None


@pytest.mark.parametrize(
    ("kwargs", "rule", "reason"),
    [
        ({"modality": "MR"}, "modality", "not a chest radiograph: Modality MR"),
        ({"modality": "CT", "sop_class": CT_STORAGE}, "image-object", "CT Image Storage"),
        ({"body_part": "HAND"}, "body-part", "Body Part Examined HAND"),
        ({"view_position": "LL"}, "frontal-view", "not a frontal view: View Position LL"),
        ({"photometric": "RGB"}, "greyscale", "colour image (RGB)"),
    ],
)
def test_refusals_name_the_rule_and_reason(kwargs: dict[str, object], rule: str, reason: str) -> None:
    result = _eligibility(**kwargs)
    assert not result.ok
    assert rule in result.rule_ids
    assert reason in (result.reason or "")


def test_tiny_image_is_refused() -> None:
    result = evaluate(CxrInstance.from_dataset(make_cxr_dataset(rows=64, cols=64)))
    assert result.rule_ids == ("min-size",)
    assert "too small (64x64)" in (result.reason or "")


def test_missing_body_part_accepted_only_when_described_as_chest() -> None:
    ds = make_cxr_dataset(rows=300, cols=300, body_part=None)
    assert evaluate(CxrInstance.from_dataset(ds)).ok  # StudyDescription says "chest"
    ds.StudyDescription = "knee"
    refused = evaluate(CxrInstance.from_dataset(ds))
    assert refused.rule_ids == ("body-part",)
    assert "knee" not in (refused.reason or ""), "free text must never reach a reason"


def test_structured_report_is_not_an_image() -> None:
    ds = make_cxr_dataset(rows=300, cols=300)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    del ds.PixelData
    result = evaluate(CxrInstance.from_dataset(ds))
    assert result.reason == "not an image: Enhanced SR Storage"


def test_every_rule_has_an_id_and_description() -> None:
    ids = [r.rule_id for r in CHEST_RADIOGRAPH_RULES]
    assert len(ids) == len(set(ids))
    assert all(r.description for r in CHEST_RADIOGRAPH_RULES)


def test_instance_keeps_no_patient_attributes() -> None:
    inst = CxrInstance.from_dataset(make_cxr_dataset(study_uid=generate_uid()))
    assert "CANARY" not in repr(inst)
