"""The lesion-insertion dataset on the real backgrounds, and a one-epoch run of the cxr-nodule recipe
on a tiny subset: leave-one-background-out folds, calibration, FROC, export and reload."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from secondreader.cli import main
from secondreader.model.card import load_card
from secondreader.model.dense import DensePredictor, load_predictor
from secondreader.preprocessing import InputSpec
from secondreader.training.config import CalibrationConfig, TrainConfig, load_config
from secondreader.training.dense.data import build_pool, build_test_set, load_backgrounds
from secondreader.training.lesions import lung_mask, square_picture
from secondreader.training.losses import LossConfig
from secondreader.training.train import train

from ..conftest import ROOT

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def _config(shared_data: Path, tmp_path: Path, keep: tuple[str, ...] | None = None,
            lesions: dict[str, Any] | None = None) -> TrainConfig:
    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-nodule-simulated.yaml").read_text())
    raw["data"]["path"] = str(shared_data)
    if keep is not None:
        raw["lesions"]["backgrounds"] = [b for b in raw["lesions"]["backgrounds"] if b["id"] in keep]
    raw["lesions"].update(per_background=12, generated=16, generated_bases=4, validation_per_background=6,
                          validation_generated=8, test_per_background=6, test_generated=8, input_size=128,
                          work_size=160, crop=64, **(lesions or {}))
    # the CPU: its bit-for-bit repeatability is what these tests compare (tests/gpu covers CUDA)
    raw["schedule"].update({"epochs": 1, "batch_size": 8, "device": "cpu"})
    raw["output_dir"] = str(tmp_path / "bundle")
    raw["checkpoint_dir"] = str(tmp_path / "runs")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "nodule.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def without_seconds(folds: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    """Fold figures less their wall-clock time (the only part that differs between equal runs)."""
    return [{k: v for k, v in f.items() if k != "seconds"} for f in folds]


def test_every_configured_background_reads_as_a_chest_with_two_lungs(shared_data: Path, tmp_path: Path) -> None:
    cfg = _config(shared_data, tmp_path)
    assert cfg.lesions is not None
    backgrounds = load_backgrounds(cfg.lesions, cfg.data.path)
    assert [b.id for b in backgrounds] == [b.id for b in cfg.lesions.backgrounds]
    assert [b.real_lesions for b in backgrounds] == [False] * 5 + [True]
    for bg in backgrounds:
        assert bg.picture.dtype == np.float32 and max(bg.picture.shape) <= cfg.lesions.test_max_side
        assert 0.0 <= bg.picture.min() and bg.picture.max() <= 1.0 and bg.picture.std() > 0.1
        picture = square_picture(bg.picture, 256)
        mask = lung_mask(picture)
        assert 0.08 < mask.mean() < 0.45, bg.id
        # lungs are dark in a bright-bone picture: the readers got the polarity right
        assert picture[mask].mean() < picture[~mask].mean() - 0.05, bg.id
        rows, cols = np.nonzero(mask)
        assert rows.mean() < 0.75 * 256, bg.id  # and the orientation (lungs above the abdomen)


def test_pools_and_test_sets_hold_the_nodules_they_claim(shared_data: Path, tmp_path: Path) -> None:
    cfg = _config(shared_data, tmp_path, keep=("nih-00000001-000", "rg1-cr"))
    lc = cfg.lesions
    assert lc is not None
    backgrounds = load_backgrounds(lc, cfg.data.path)
    pool = build_pool(backgrounds, lc, per_background=10, generated=6, seed=1, stream=1)
    assert len(pool) == 26 and pool.images.shape == (26, 128, 128)
    assert sorted(set(pool.groups.tolist())) == [-1, 0, 1]
    for k in range(len(pool)):
        assert bool(pool.targets[k].any()) == bool(pool.nodules[k])
        for n in pool.nodules[k]:
            assert n.model == "A" and pool.targets[k][int(round(n.row)), int(round(n.col))]
    # the background with real lesions: its lungs carry no label (weight 0), its nodules do
    rg1 = pool.groups == 1
    assert (pool.weights[rg1] == 0).any() and (pool.weights[~rg1] == 1).all()
    assert (pool.weights[pool.targets == 1] == 1).all()
    spec = InputSpec(size=(128, 128), mean=0.5, std=0.25)
    test = build_test_set([backgrounds[0].picture], 6, lc, spec, seed=1, stream=3)
    assert test.inputs.shape == (6, 1, 128, 128) and test.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert all(n.model == "B" for nodules in test.nodules for n in nodules)


def test_vessel_mimics_change_the_pictures_but_not_the_recipes_nodules(shared_data: Path, tmp_path: Path) -> None:
    cfg = _config(shared_data, tmp_path, keep=("nih-00000001-000",))
    lc = cfg.lesions
    assert lc is not None
    backgrounds = load_backgrounds(lc, cfg.data.path)
    plain = build_pool(backgrounds, lc, per_background=8, generated=4, seed=1, stream=1)
    with_mimics = build_pool(backgrounds, lc.model_copy(update={"vessel_mimic_fraction": 1.0}), per_background=8,
                             generated=4, seed=1, stream=1)
    assert plain.nodules == with_mimics.nodules and np.array_equal(plain.targets, with_mimics.targets)
    changed = np.abs(plain.images.astype(np.float32) - with_mimics.images.astype(np.float32)) > 1e-3
    assert changed.any(axis=(1, 2)).all()  # every picture got its trees


def test_a_real_opacity_of_unknown_nature_gets_no_label_and_no_test_nodule(shared_data: Path, tmp_path: Path) -> None:
    cfg = _config(shared_data, tmp_path, keep=("nih-00027426-000",))
    lc = cfg.lesions
    assert lc is not None and lc.backgrounds[0].unknown, "the shipped config marks its round opacity"
    (background,) = load_backgrounds(lc, cfg.data.path)
    assert background.unknown is not None and 0 < background.unknown.mean() < 0.02
    pool = build_pool([background], lc, per_background=10, generated=0, seed=1, stream=1)
    unlabelled = (pool.weights == 0) & (pool.targets == 0)
    assert unlabelled.any(axis=(1, 2)).sum() >= 8  # the opacity stays in view under most geometries
    for k in range(len(pool)):
        for n in pool.nodules[k]:  # no training nodule is inserted over it
            assert pool.weights[k][int(round(n.row)), int(round(n.col))] == 1
    spec = InputSpec(size=(128, 128), mean=0.5, std=0.25)
    test = build_test_set([background.picture], 6, lc, spec, seed=1, stream=3, unknowns=[background.unknown])
    assert test.unknown is not None and all(u is not None and u.any() for u in test.unknown)
    for where, nodules in zip(test.unknown, test.nodules, strict=True):
        assert where is not None
        for n in nodules:
            assert not where[int(round(n.row)), int(round(n.col))]


def test_one_epoch_of_the_nodule_recipe_writes_a_bundle_that_reloads(shared_data: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(shared_data, tmp_path, keep=("nih-00000001-000", "nih-00027426-000", "rg1-cr"))
    meta = train(cfg)
    bundle = cfg.output_dir
    card = load_card(bundle)
    assert card.name == "cxr-nodule" and card.saliency.method == "dense"
    assert [f.code for f in card.findings] == ["nodule"]
    metrics = meta["secondreader"]["metrics"]
    # leave one background out: the two clean backgrounds are folds, the one with real lesions is not
    assert [f["background"] for f in metrics["folds"]] == ["nih-00000001-000", "nih-00027426-000"]
    study = metrics["test"]["study"]
    assert study["n"] == 12
    # the pooled figures apply each fold's own operating point; their intervals come from those counts
    for key in ("accuracy", "sensitivity", "specificity"):
        assert study[f"{key}_ci95"][0] <= study[key] <= study[f"{key}_ci95"][1], key
    assert set(metrics["test"]["froc"]["sensitivity"]) == {"0.25", "0.5", "1.0", "2.0"}
    assert set(metrics["real_lesion_backgrounds"]) == {"rg1-cr"}
    # nih-00027426-000's round opacity: its fold is also scored as if the opacity were no nodule
    assert [f["background"] for f in metrics["folds_strict"]] == ["nih-00027426-000"]
    assert metrics["test_strict"]["study"]["n"] == 12
    assert (tmp_path / "runs" / "folds" / "nih-00000001-000.json").is_file()
    text = (bundle / "docs" / "README.md").read_text()
    assert "SIMULATED" in text and "What it is NOT for" in text and "leave-one-background-out" in text
    assert "unknown opacities counted as false" in text and "nipple shadow" in text
    # calibration: ECE per test set in the card and the reliability plot beside it
    assert "| ECE |" in text and "Calibration: `reliability.png` beside this card" in text
    assert (bundle / "docs" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert meta["secondreader"]["calibration_plot"] == "docs/reliability.png"
    predictor = load_predictor(bundle, device="cpu")
    assert isinstance(predictor, DensePredictor)
    # the shipped recipe's mirror-averaged map is served as it was evaluated
    assert cfg.saliency.flip_average and card.saliency.flip_average and predictor.recipe.flip_average
    assert "left-right mirror image" in text
    (prediction,) = predictor.predict(torch.zeros(1, 1, 128, 128))
    assert prediction.logits.shape == (1,) and prediction.saliency is not None
    assert prediction.saliency.shape == (1, 128, 128)
    assert (bundle / "models" / "model.pt").stat().st_size < 5_000_000
    # the pooled held-out FROC says which nodules it found, by contrast and by size; so does the card
    bands = metrics["test"]["froc"]["by_band_at_1"]
    for name in ("contrast", "diameter_fraction"):
        assert sum(b["n"] for b in bands[name]) == metrics["test"]["froc"]["n_lesions"]
    assert "Which held-out nodules it finds" in text and "| diameter < 4% of the width" in text
    # `secondreader evaluate BUNDLE --config` recomputes the generated-chest test from the shipped weights
    # (the card's input normalisation is rounded to 6 decimals: equal within the issue's +-0.01)
    capsys.readouterr()  # the training's progress
    assert main(["evaluate", str(bundle), "--config", str(tmp_path / "nodule.yaml")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == card.ref
    for key in ("auroc", "sensitivity", "specificity"):
        assert report["test_generated"]["study"][key] == pytest.approx(metrics["test_generated"]["study"][key],
                                                                       abs=0.01)
    assert report["test_generated"]["froc"]["sensitivity"] == pytest.approx(
        metrics["test_generated"]["froc"]["sensitivity"], abs=0.01)
    seen = report["trained_on_backgrounds"]
    assert set(seen) == {"nih-00000001-000", "nih-00027426-000"}
    assert all(s["study"]["n"] == 6 for s in seen.values())
    # beside them, how the pictures training makes of each background differ from its served images
    gap = report["train_serve_gap"]
    assert set(gap) == set(seen)
    for g in gap.values():
        assert all(np.isfinite(v) and v > 0 for v in g["fine_detail"].values())
        assert all(np.isfinite(v) for v in g["largest_logit_median"].values())
    assert main(["evaluate", str(bundle)]) == 2  # neither --data nor --config
    assert "--config" in capsys.readouterr().err
    # --resume reuses the finished folds (same configuration) and ends with the same weights
    # (a new version number alone keeps them: it labels the bundle and its Device UID, not the fits)
    bumped = cfg.model_copy(update={"version": cfg.version + "-next"})
    again = train(bumped, resume=True)
    assert again["secondreader"]["metrics"]["folds"] == metrics["folds"]
    assert again["secondreader"]["weights_sha256"] == meta["secondreader"]["weights_sha256"]
    assert again["secondreader"]["device_uid"] != meta["secondreader"]["device_uid"]
    # the record and the card say which folds came from the earlier run (their seconds are not this run's)
    assert meta["secondreader"]["training"]["folds_reused"] == []
    assert again["secondreader"]["training"]["folds_reused"] == ["nih-00000001-000", "nih-00027426-000"]
    card_text = (bundle / "docs" / "README.md").read_text()
    assert "resumed with `--resume`" in card_text and "nih-00027426-000; their own fitting times" in card_text
    assert "resumed" not in text


def test_folds_only_evaluates_a_learning_curve_on_fewer_films_and_writes_no_model(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`secondreader train CONFIG --folds-only` with `lesions.fold_backgrounds`: each fold's model
    trains on that many of the other real films (as many real pictures), is tested on the same
    held-out images, and no final model or bundle is made."""
    keep = ("nih-00000001-000", "nih-00027426-000", "rg1-cr")
    curve = _config(shared_data, tmp_path / "one", keep=keep, lesions={"fold_backgrounds": 1})
    capsys.readouterr()
    assert main(["train", str(tmp_path / "one" / "nodule.yaml"), "--folds-only"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["recipe"] == "cxr-nodule" and printed["test"]["study"]["n"] == 12
    saved = json.loads((tmp_path / "one" / "runs" / "leave-one-out.json").read_text())
    assert saved["fold_backgrounds"] == 1 and saved["folds"] == printed["folds"]
    assert not curve.output_dir.exists(), "folds only: no bundle"
    assert not (tmp_path / "one" / "runs" / "fits" / "final.pt").exists(), "and no final model"
    folds = {f["background"]: f for f in printed["folds"]}
    assert set(folds) == {"nih-00000001-000", "nih-00027426-000"}
    for held, fold in folds.items():
        assert len(fold["trained_on"]) == 1 and held not in fold["trained_on"]
        assert fold["trained_on"][0] in keep
    assert "test_strict" in saved  # the real opacity of unknown nature is scored both ways, as in a bundle
    # a bundle's held-out figures must come from folds trained as its model is: no bundle from a curve
    with pytest.raises(ValueError, match="--folds-only"):
        train(curve)
    # every other film (2 here) is the ordinary leave-one-out: the same fold figures
    ordinary = train(_config(shared_data, tmp_path / "all", keep=keep), folds_only=True)["leave_one_out"]
    every = train(_config(shared_data, tmp_path / "two", keep=keep, lesions={"fold_backgrounds": 2}),
                  folds_only=True)["leave_one_out"]
    assert [f.pop("trained_on") for f in every["folds"]] == [["nih-00027426-000", "rg1-cr"],
                                                            ["nih-00000001-000", "rg1-cr"]]
    assert without_seconds(every["folds"]) == without_seconds(ordinary["folds"])
    assert every["test"] == ordinary["test"]
    # the same held-out test images with one film as with two, a different model
    assert [f["n"] for f in printed["folds"]] == [f["n"] for f in ordinary["folds"]]
    assert without_seconds(printed["folds"]) != without_seconds(ordinary["folds"])
    # a classifier's recipe has no folds to evaluate
    assert main(["train", str(ROOT / "training" / "configs" / "cxr-pneumonia.yaml"), "--folds-only"]) == 2
    assert "--folds-only evaluates a localisation recipe" in capsys.readouterr().err


def test_fits_in_worker_processes_give_the_same_model_as_in_one(shared_data: Path, tmp_path: Path) -> None:
    """The shipped config fits its folds and final model in two processes: the bundle must not
    depend on that (every fit is seeded alone; one thread each is bit-for-bit repeatable)."""
    keep = ("nih-00000001-000", "nih-00027426-000")
    one = _config(shared_data, tmp_path / "one", keep=keep).model_copy(deep=True)
    one.schedule.workers = 1
    two = _config(shared_data, tmp_path / "two", keep=keep)
    assert two.schedule.workers == 2, "the shipped config trains in two processes"
    a, b = train(one)["secondreader"], train(two)["secondreader"]
    assert a["weights_sha256"] == b["weights_sha256"]

    assert without_seconds(a["metrics"]["folds"]) == without_seconds(b["metrics"]["folds"])
    assert len(a["metrics"]["folds"]) == 2 and not (tmp_path / "two" / "runs" / "pools").exists()


def test_batches_prepared_ahead_by_threads_do_not_depend_on_how_many(shared_data: Path, tmp_path: Path) -> None:
    """``loader_workers``: each batch from its own seed, so one thread and two give the same weights;
    the shipped stream (0: one generator, in the step's thread) is another, and stays as it was."""
    keep = ("nih-00000001-000", "nih-00027426-000")

    def weights(loaders: int) -> str:
        cfg = _config(shared_data, tmp_path / str(loaders), keep=keep).model_copy(deep=True)
        cfg.schedule.loader_workers, cfg.schedule.workers = loaders, 1
        return str(train(cfg)["secondreader"]["weights_sha256"])

    one, two, drawn = weights(1), weights(2), weights(0)
    assert one == two
    assert drawn != one


def test_a_channels_last_run_writes_an_ordinary_bundle_that_names_it(shared_data: Path, tmp_path: Path) -> None:
    """``schedule.channels_last``: the bundle names it, and its weights are an ordinary (contiguous)
    state dict that loads into the served network, with the same keys as the default layout's."""
    keep = ("nih-00000001-000", "nih-00027426-000")

    def run(channels_last: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        cfg = _config(shared_data, tmp_path / str(channels_last), keep=keep).model_copy(deep=True)
        cfg.schedule.channels_last, cfg.schedule.workers = channels_last, 1
        meta = train(cfg)["secondreader"]
        return meta, torch.load(tmp_path / str(channels_last) / "bundle" / "models" / "model.pt", weights_only=True)

    (default, a), (cl, b) = run(False), run(True)
    assert "channels-last" in cl["training"]["device"] and "channels-last" not in default["training"]["device"]
    # the machine line records the threads the config trains with (schedule.threads: 1), not the
    # process's default (the machine's cores)
    assert " 1 threads (" in cl["training"]["machine"]
    assert a.keys() == b.keys()
    assert all(value.is_contiguous() for value in b.values())
    served = load_predictor(tmp_path / "True" / "bundle")
    assert isinstance(served, DensePredictor)


def test_an_interrupted_run_continues_every_fit_from_its_last_epoch(shared_data: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Each fit keeps its state after every epoch: a run stopped after epoch 1 of 2 (in two worker
    processes) and resumed (in one) ends with the weights and fold figures of a run never stopped."""
    keep = ("nih-00000001-000", "nih-00027426-000")

    def two_epochs(where: str, workers: int) -> TrainConfig:
        cfg = _config(shared_data, tmp_path / where, keep=keep).model_copy(deep=True)
        cfg.schedule.epochs, cfg.schedule.workers = 2, workers
        return cfg

    whole = train(two_epochs("whole", 1))["secondreader"]
    cut = two_epochs("cut", 2)
    assert train(cut, stop_after_epochs=1) == {} and not (tmp_path / "cut" / "bundle").exists()
    fits = tmp_path / "cut" / "runs" / "fits"
    assert sorted(p.name for p in fits.iterdir()) == ["final.pt", "fold-nih-00000001-000.pt",
                                                     "fold-nih-00027426-000.pt"]
    assert all(torch.load(p, weights_only=True)["epoch"] == 1 for p in fits.iterdir())
    cut.schedule.workers = 1  # the digest leaves the workers out: they do not change the weights
    with caplog.at_level(logging.INFO, logger="secondreader.training.dense"):
        resumed = train(cut, resume=True)["secondreader"]
    assert sorted(r.getMessage() for r in caplog.records if "resumed after" in r.getMessage()) == [
        "fit final: resumed after epoch 1", "fit fold-nih-00000001-000: resumed after epoch 1",
        "fit fold-nih-00027426-000: resumed after epoch 1"]
    assert resumed["weights_sha256"] == whole["weights_sha256"]

    assert without_seconds(resumed["metrics"]["folds"]) == without_seconds(whole["metrics"]["folds"])
    assert resumed["metrics"]["test"] == whole["metrics"]["test"]


def test_a_nodule_model_fine_tunes_from_a_shipped_one_and_refuses_a_classifier(shared_data: Path, tmp_path: Path,
                                                                               models_dir: Path) -> None:
    keep = ("nih-00000001-000",)
    base = _config(shared_data, tmp_path / "base", keep=keep).model_copy(deep=True)
    assert base.lesions is not None
    base.lesions.folds = "none"  # the final model only: what init_from needs
    source = train(base)["secondreader"]
    # a learning rate of ~0 from the trained weights: the fine-tuned model is the source model
    tuned_cfg = _config(shared_data, tmp_path / "tuned", keep=keep).model_copy(
        update={"init_from": base.output_dir}, deep=True)
    assert tuned_cfg.lesions is not None
    tuned_cfg.lesions.folds = "none"
    tuned_cfg.schedule.max_lr = 1e-9
    tuned = train(tuned_cfg)["secondreader"]
    assert tuned["training"]["init_from"] == {"model": load_card(base.output_dir).ref,
                                              "weights_sha256": source["weights_sha256"]}
    assert tuned["input"] == source["input"]  # the source's normalisation, not one measured again
    a = torch.load(base.output_dir / "models" / "model.pt", weights_only=True)
    b = torch.load(tuned_cfg.output_dir / "models" / "model.pt", weights_only=True)
    for key, value in a.items():
        if "running" in key or "num_batches" in key:
            continue  # batch-norm statistics move in training mode whatever the learning rate
        assert torch.allclose(value, b[key], atol=1e-5), key
    wrong = tuned_cfg.model_copy(update={"init_from": models_dir / "cxr-pneumonia"})
    with pytest.raises(ValueError, match="init_from model cxr-pneumonia@1.1.0 has network"):
        train(wrong)


def test_the_dense_recipe_trains_with_monai_losses_named_in_its_config(shared_data: Path, tmp_path: Path) -> None:
    cfg = _config(shared_data, tmp_path, keep=("nih-00000001-000", "rg1-cr")).model_copy(deep=True)
    assert cfg.lesions is not None
    cfg.lesions.folds = "none"
    cfg.loss = LossConfig.model_validate({"terms": [
        {"class": "FocalLoss", "args": {"gamma": 2.0}},
        {"class": "MaskedDiceLoss", "args": {"sigmoid": True, "batch": True}, "weight": 0.5}]})
    cfg.calibration = CalibrationConfig(method="temperature")
    meta = train(cfg)["secondreader"]
    assert meta["training"]["loss"] == ("monai.losses.FocalLoss(gamma=2.0) + "
                                        "0.5 x monai.losses.MaskedDiceLoss(sigmoid=True, batch=True)")
    text = (cfg.output_dir / "docs" / "README.md").read_text()
    stored = meta["findings"]["nodule"]["calibration"]
    assert "monai.losses.FocalLoss(gamma=2.0)" in text and f"temperature scaling (T={stored['temperature']})" in text
    # temperature scaling: served as stored, and the map's region threshold is its inverse at the
    # operating point
    assert stored["method"] == "temperature" and stored["b"] == 0.0
    predictor = load_predictor(cfg.output_dir, device="cpu")
    finding = predictor.card.findings[0]
    assert finding.calibration.method == "temperature"
    threshold = meta["saliency"]["region_threshold"]
    logit = float(np.log(threshold / (1 - threshold)))
    assert float(finding.calibration.probability(logit)) == pytest.approx(finding.operating_point, abs=1e-3)
    # the built-in loss's own weights do not apply to configured terms: refused, not ignored
    raw = cfg.model_dump(mode="json", by_alias=True)
    raw["lesions"]["pos_weight"] = 3.0
    with pytest.raises(ValidationError, match="give each term its own weight"):
        TrainConfig.model_validate(raw)


def test_a_validation_split_without_negatives_is_refused_before_any_fitting(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One background and one generated validation chest: the fold that leaves the background out
    validates on that one picture, of one class. The run stops before fitting, naming the fold and
    the fix."""
    cfg = _config(shared_data, tmp_path, keep=("nih-00000001-000",))
    raw = yaml.safe_load((tmp_path / "nodule.yaml").read_text())
    raw["lesions"]["validation_generated"] = 1
    (tmp_path / "nodule.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "nodule.yaml")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"validation pictures for nih-00000001-000 are 1, [01] of them with nodules", err)
    assert "lesions.validation_generated" in err and "Traceback" not in err
    assert not (cfg.checkpoint_dir / "fits").exists()  # nothing was fitted
