"""The operating point by specificity (a review budget on normal films) and the default mode from targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from secondreader.training.common import calibrate_on_validation, scope_and_mode
from secondreader.training.config import OperatingPointConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("specificity", [0.8, 0.9, 0.95])
def test_the_specificity_point_flags_at_most_the_budget_of_normals(specificity: float) -> None:
    rng = np.random.default_rng(3)
    logits = np.concatenate([rng.normal(0, 1, 200), rng.normal(1.5, 1, 100)])
    labels = np.concatenate([np.zeros(200, int), np.ones(100, int)])
    _, p, op, urgent = calibrate_on_validation(logits, labels, OperatingPointConfig(method="specificity",
                                                                                     specificity=specificity))
    flagged = float((p[labels == 0] >= op).mean())
    assert flagged <= 1 - specificity + 1e-9
    assert flagged >= 1 - specificity - 0.01, "the lowest such threshold: no sensitivity given away"
    assert urgent >= op


def test_a_budget_above_every_normal_flags_none() -> None:
    labels = np.asarray([0, 0, 0, 1, 1])
    _, p, op, _ = calibrate_on_validation(np.asarray([0.0, 1.0, 2.0, 3.0, 0.5]), labels,
                                          OperatingPointConfig(method="specificity", specificity=0.99))
    assert not (p[labels == 0] >= op).any() and (p[labels == 1] >= op).sum() == 1


def test_the_rule_round_trips_through_its_description() -> None:
    rule = OperatingPointConfig(method="specificity", specificity=0.9)
    assert rule.describe() == "specificity 0.9"
    assert OperatingPointConfig.from_description(rule.describe()) == rule


def test_a_model_defaults_to_live_only_when_every_target_is_reached(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "training" / "configs" / "cxr-nodule.yaml")
    assert cfg.targets == {"study_auroc": 0.85, "froc_1": 0.70}
    met = scope_and_mode(cfg, {"study_auroc": 0.9, "froc_1": 0.71})
    assert met["mode"]["default"] == "live" and met["routing"]["enabled"]
    missed = scope_and_mode(cfg, {"study_auroc": 0.9, "froc_1": 0.69})
    assert missed["mode"]["default"] == "shadow" and not missed["routing"]["enabled"]
    assert "froc_1 0.690 (target 0.7)" in missed["mode"]["reason"]
    assert missed["scope"]["age_years"] == [18, None] and missed["scope"]["unknown_age"] == "applies"
    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-pneumonia-adult.yaml").read_text())
    raw.pop("targets")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert scope_and_mode(load_config(path), {})["mode"] == {"default": "live", "reason": "no targets set"}


def test_tied_normals_at_the_cut_do_not_push_the_flags_over_the_budget() -> None:
    # 20 normals, four of them tied where the 90% cut falls: the point must go above the tie
    negatives = np.asarray([0.0] * 16 + [1.0] * 4)
    logits = np.concatenate([negatives, np.asarray([2.0, 3.0, 0.5])])
    labels = np.concatenate([np.zeros(20, int), np.ones(3, int)])
    _, p, op, _ = calibrate_on_validation(logits, labels, OperatingPointConfig(method="specificity",
                                                                               specificity=0.9),
                                          method="temperature")
    assert (p[labels == 0] >= op).sum() <= 2 and (p[labels == 1] >= op).sum() == 2


def test_a_missing_figure_never_meets_its_target() -> None:
    cfg = load_config(ROOT / "training" / "configs" / "cxr-nodule.yaml")
    assert scope_and_mode(cfg, {"study_auroc": float("nan"), "froc_1": 0.9})["mode"]["default"] == "shadow"
    assert scope_and_mode(cfg, {"froc_1": 0.9})["mode"]["default"] == "shadow"
