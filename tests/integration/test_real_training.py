"""Training on real adult data: JSRT's real nodules (cross-validated over films) and the NIH
pneumonia films (split by patient), on tiny subsets through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from secondreader.cli import main
from secondreader.model.card import load_card
from secondreader.training.config import load_config
from secondreader.training.realdata import jsrt_folds, load_jsrt, load_nih

from ..conftest import ROOT

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def test_jsrt_folds_hold_each_film_once_and_share_the_nodules(shared_data: Path) -> None:
    films = load_jsrt(shared_data / "jsrt", 64)
    assert len(films) >= 100 and sum(f.nodule is not None for f in films) >= 60
    folds = jsrt_folds(films, 5, seed=1)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    for k in range(5):
        part = [f for f, g in zip(films, folds, strict=True) if g == k]
        share = sum(f.nodule is not None for f in part) / len(part)
        assert abs(share - 101 / 163) < 0.1, "every fold holds about JSRT's share of nodule films"
    assert np.array_equal(folds, jsrt_folds(films, 5, seed=1)) and not np.array_equal(folds, jsrt_folds(films, 5, 2))
    # the real nodule's centre lands on the model grid where JSRT says (x column, y row at 1024 px)
    first = next(f for f in films if f.nodule is not None)
    row = next(r for r in (shared_data / "jsrt" / "nodules.csv").read_text().splitlines()[1:]
               if r.startswith(first.id + "."))
    x, y = float(row.split(",")[2]), float(row.split(",")[3])
    assert first.nodule is not None
    assert first.nodule[0] == pytest.approx((y + 0.5) / 16 - 0.5)
    assert first.nodule[1] == pytest.approx((x + 0.5) / 16 - 0.5)


def test_no_nih_patient_is_in_two_splits_and_the_nodule_model_sees_training_patients_only(shared_data: Path) -> None:
    from secondreader.training.config import RealNoduleConfig
    from secondreader.training.realdata import load_nih_splits
    from secondreader.training.realnodule import load_normals

    films = load_nih(shared_data / "nih-pneumonia")
    _, chosen = load_nih_splits(shared_data / "nih-pneumonia", 16)
    patients = {split: {f.patient_id for f in part} for split, part in chosen.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(part) for part in chosen.values()) == len(films)
    assert len(chosen["train"]) > len(chosen["val"]) > 50 and len(chosen["test"]) > 50
    # the nodule model's extra normal backgrounds: no-finding films of training patients only
    normals = {name for name, _, _ in load_normals(RealNoduleConfig(normals_path=shared_data / "nih-pneumonia"), 16)}
    by_stem = {Path(f.id).stem: f for f in films}
    assert normals and all(by_stem[n].patient_id in patients["train"] and by_stem[n].label == 0 for n in normals)


def _tiny(shared_data: Path, tmp_path: Path, name: str, update: dict) -> Path:  # type: ignore[type-arg]
    raw = yaml.safe_load((ROOT / "training" / "configs" / name).read_text())
    raw["data"]["path"] = str(shared_data / raw["data"]["path"].split("shared/data/")[1])
    for key, value in update.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    raw["checkpoint_dir"] = str(tmp_path / "runs")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_real_nodule_recipe_cross_validates_over_films_and_ships_in_shadow(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _tiny(shared_data, tmp_path, "cxr-nodule.yaml", {
        "real_nodules": {"limit": 20, "copies": 1, "max_normals": 6,
                         "normals_path": str(shared_data / "nih-pneumonia")},
        "lesions": {"input_size": 96, "crop": 48},
        "schedule": {"epochs": 1, "batch_size": 8, "device": "cpu", "workers": 1}})
    cfg = load_config(config)
    assert main(["train", str(config), "--out", str(tmp_path / "bundle")]) == 0
    capsys.readouterr()
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    sr = meta["secondreader"]
    test = sr["metrics"]["test"]
    # every film tested once, by the fold model that never trained on it nor chose its threshold on it
    folds = [json.loads((tmp_path / "runs" / "folds" / f"fold-{k}.json").read_text()) for k in range(1, 6)]
    tested = [film for state in folds for film in state["films"]]
    assert sorted(tested) == sorted(sr["training"]["data"]["folds"]) and len(set(tested)) == 20
    for state in folds:
        assert not set(state["films"]) & set(state["validation_films"])
        fold = {sr["training"]["data"]["folds"][f] for f in state["films"]}
        assert len(fold) == 1 and not {sr["training"]["data"]["folds"][f] for f in state["validation_films"]} & fold
    assert test["study"]["n"] == 20 and test["froc"]["n_lesions"] == 10
    real = test["real_nodules"]["at_1_false_region_per_image"]
    assert sum(b["n"] for b in real["by_subtlety"].values()) == 10
    assert sum(b["n"] for b in real["by_diameter_mm"].values()) == 10
    # one epoch on 20 films misses the targets: the bundle defaults to shadow and says why; its scope is the config's
    assert sr["mode"]["default"] == "shadow" and "study_auroc" in sr["mode"]["reason"]
    assert sr["scope"] == cfg.scope and sr["scope"]["age_years"] == [18, None]
    review = sr["metrics"]["nih_normal_review_rate"]
    assert review["n"] > 20 and 0 <= review["rate"] <= 1
    card = (tmp_path / "bundle" / "docs" / "README.md").read_text()
    assert "**real nodules**" in card and "## Scope" in card and "by JSRT subtlety" in card
    assert load_card(tmp_path / "bundle").name == "cxr-nodule"


def test_the_adult_pneumonia_recipe_reports_by_view_and_keeps_its_review_budget(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _tiny(shared_data, tmp_path, "cxr-pneumonia-adult.yaml", {
        "data": {"image_size": 64, "limit": 40},
        "schedule": {"epochs": 1, "batch_size": 16, "device": "cpu"}})
    assert main(["train", str(config), "--out", str(tmp_path / "bundle")]) == 0
    capsys.readouterr()
    sr = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())["secondreader"]
    assert set(sr["metrics"]["test_by_view"]) >= {"view PA", "view AP"}
    assert sum(v["n"] for k, v in sr["metrics"]["test_by_view"].items() if k.startswith("view")) == \
        sr["metrics"]["test"]["n"]
    # the operating point flags at most 10% of validation's normal films
    assert sr["metrics"]["validation"]["specificity"] >= 0.9
    assert sr["findings"]["pneumonia"]["operating_point_method"] == "specificity 0.9"
    assert sr["mode"]["default"] in ("live", "shadow") and "auroc" in sr["mode"]["reason"]
    assert sr["scope"]["age_years"] == [18, None]
