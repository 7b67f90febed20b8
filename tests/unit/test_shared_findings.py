"""Two models that report one finding code (a paediatric and an adult pneumonia model): allowed only
with disjoint scopes, and a study gets the code once, from the model that applies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from secondreader.model.card import check_shared_findings, load_card
from secondreader.pipeline import merge_shared_findings
from secondreader.scoring.priority import FindingResult

ROOT = Path(__file__).resolve().parents[2]


def _card(tmp_path: Path, name: str, ages: list[int | None], unknown: str):  # type: ignore[no-untyped-def]
    bundle = tmp_path / name
    shutil.copytree(ROOT / "models" / "cxr-pneumonia" / "configs", bundle / "configs")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["name"] = name
    meta["secondreader"]["scope"].update(age_years=ages, unknown_age=unknown)
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    return load_card(bundle)


def test_shared_codes_need_disjoint_scopes(tmp_path: Path) -> None:
    child = _card(tmp_path, "child", [1, 5], "not_applicable")
    adult = _card(tmp_path, "adult", [18, None], "applies")
    check_shared_findings([child, adult])
    with pytest.raises(ValueError, match="models child and teen both report finding 'pneumonia' and their age ranges"):
        check_shared_findings([child, _card(tmp_path, "teen", [5, 17], "not_applicable")])
    with pytest.raises(ValueError, match="both apply when the age is unknown"):
        check_shared_findings([adult, _card(tmp_path, "kid", [1, 5], "applies")])


def _finding(model: str, p: float | None, reason: str | None = None) -> FindingResult:
    return FindingResult("pneumonia", p, 0.5, 0.9, model, mode="shadow", applicable=p is not None,
                         not_applicable_reason=reason)


def test_a_study_gets_the_code_once_from_the_model_that_applies() -> None:
    nodule = FindingResult("nodule", 0.2, 0.5, 0.9, "cxr-nodule@2")
    child = _finding("cxr-pneumonia@1", None, "cxr-pneumonia is validated on children aged 1-5 years; patient age 053Y")
    adult = _finding("cxr-pneumonia-adult@1", 0.7)
    assert merge_shared_findings([child, nodule, adult]) == [adult, nodule]
    both_out = merge_shared_findings([child, _finding("cxr-pneumonia-adult@1", None, "adult: patient age 010Y")])
    assert len(both_out) == 1 and not both_out[0].applicable
    assert both_out[0].not_applicable_reason == ("cxr-pneumonia is validated on children aged 1-5 years; patient age "
                                                 "053Y; adult: patient age 010Y")
    assert merge_shared_findings([nodule]) == [nodule]


def test_where_a_study_falls_in_both_scopes_the_finding_that_routes_wins() -> None:
    """One image says 3 years (the children's model applies), another gives no age (the adults'
    applies): the kept finding is the routing positive one, not merely the more probable."""
    child = FindingResult("pneumonia", 0.6, 0.5, 0.9, "cxr-pneumonia@1", mode="live")
    adult = FindingResult("pneumonia", 0.7, 0.9, 0.95, "cxr-pneumonia-adult@1", mode="live")
    assert merge_shared_findings([adult, child]) == [child]
    shadow = FindingResult("pneumonia", 0.99, 0.5, 0.9, "cxr-pneumonia-adult@1", mode="shadow")
    assert merge_shared_findings([shadow, child]) == [child]
