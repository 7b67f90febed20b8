"""``secondreader train`` for a lesion-insertion config (``cxr-nodule``): :func:`train_localisation`.

The run, step by step (each a function below):

1. :func:`_start`: the device, threads and seeds;
2. :func:`_prepare`: read the real backgrounds through the serving chain and build the training and
   validation pools (model-A nodules on real and generated chests), the input normalisation, the
   folds and the run's digest (what ``--resume`` checks);
3. :func:`_fit_all`: **leave one real background out** at a time (train on the other backgrounds and
   the generated chests, calibrate on validation without the held-out background, test on it with
   model-B nodules inserted at the source resolution, through the serving chain), and train the
   shipped model on every background; side by side in ``schedule.workers`` processes, each fold
   kept as it finishes;
4. :func:`_final_metrics`: calibrate the shipped model and fix its operating point on validation,
   test it on new generated chests with model-B nodules, and pool the folds' figures (study-level
   AUROC with a bootstrap interval, FROC sensitivities at 0.25-2 false regions per image);
5. :func:`.bundle.write_dense_bundle`: the MONAI bundle, the pooled leave-one-out figures as its
   headline (or, with ``folds_only``, only the figures, :func:`_write_leave_one_out`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism

from ...model.card import ModelCard
from ...model.dense import MapRecipe, study_logits
from ...model.network import build_network
from ...preprocessing import InputSpec, prepare_frame
from ..common import init_source, state_dict_bytes, training_device, training_hardware, training_progress
from ..config import LesionConfig, TrainConfig, run_digest
from ..lesions import RealBackground
from .bundle import write_dense_bundle
from .data import (
    STREAM_TRAIN,
    STREAM_VALIDATION,
    Pool,
    as_mask,
    build_pool,
    eval_members,
    generated_test_set,
    load_backgrounds,
    members_of,
    pictures_per_background,
)
from .evaluate import Calibration, Scored, calibrate, held_out_metrics, localisation_metrics, predict_maps, score_set
from .fit import FitCheckpoints, FitInterrupted, map_recipe
from .folds import FitData, fit_final, fit_fold, fit_in_processes
from .inputs import dense_input_spec

__all__ = ["train_localisation"]

logger = logging.getLogger(__name__)


def train_localisation(cfg: TrainConfig, *, config_path: Path | None = None, resume: bool = False,
                       stop_after_epochs: int | None = None, folds_only: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (``data.kind: lesion_insertion``), evaluate it leaving one real background out
    at a time, and write its bundle. ``resume`` reuses the folds a previous run of the same
    configuration finished and continues each unfinished fit from its last epoch (both kept in
    ``checkpoint_dir``). ``stop_after_epochs`` stops the fits after that epoch without writing a
    bundle (as an interruption would). ``folds_only`` evaluates the recipe and stops there: no
    final model and no bundle, the figures in ``<checkpoint_dir>/leave-one-out.json``. Returns the
    bundle's metadata, ``{"leave_one_out": figures}`` with ``folds_only``, or ``{}`` when stopped."""
    lc = cfg.lesions
    if lc is None:
        raise ValueError("data.kind lesion_insertion needs a lesions: section")
    if lc.fold_backgrounds is not None and not folds_only:  # a bundle's held-out figures come from folds like it
        raise ValueError("lesions.fold_backgrounds is a learning curve: its folds train on fewer films than the "
                         "final model would, so run it with --folds-only (no bundle)")
    started = time.time()
    device, amp, hardware = _start(cfg)
    run = _prepare(cfg, lc, device, amp, folds_only=folds_only, started=started)
    fold_results = _reused_folds(run) if resume else {}
    reused = [run.backgrounds[f].id for f in run.folds if f in fold_results]
    try:
        weights = _fit_all(run, fold_results, resume=resume, stop_after_epochs=stop_after_epochs,
                           folds_only=folds_only)
    except FitInterrupted as stopped:
        logger.info("%s; resume with --resume", stopped)
        return {}
    for f in run.folds:
        cal = Calibration.from_json(fold_results[f]["calibration"])
        scored = Scored.from_json(fold_results[f]["test"])
        logger.info("fold %s (%.0f s): %s", run.backgrounds[f].id, fold_results[f]["seconds"],
                    json.dumps(localisation_metrics(scored, cal, seed=cfg.seed)["study"]))
    held_out = held_out_metrics([fold_results[f] for f in run.folds], seed=cfg.seed, side=lc.input_size)
    if weights is None:  # folds only: the recipe's figures, no model
        return {"leave_one_out": _write_leave_one_out(run, held_out, config_path=config_path, started=started,
                                                      hardware=hardware)}
    network = build_network(cfg.network.class_, cfg.network.args, dense=True)
    network.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    network.to(device).eval()
    val, cal, metrics = _final_metrics(run, network, held_out)
    # the calibrated study probabilities against the truth: validation (the shipped model) and the
    # held-out backgrounds pooled (each fold's model, calibrated on its own validation pool)
    curves = {"validation": (cal.probability(val.logits), val.labels)}
    if fold_results:
        held = [(Calibration.from_json(fold_results[f]["calibration"]), Scored.from_json(fold_results[f]["test"]))
                for f in run.folds]
        curves["held-out backgrounds"] = (np.concatenate([c.probability(s.logits) for c, s in held]),
                                          np.concatenate([s.labels for _, s in held]))
    return write_dense_bundle(cfg, run.spec, cal, metrics, weights, config_path=config_path, started=started,
                              folds_reused=reused, hardware=hardware, source=run.source, curves=curves)


def _start(cfg: TrainConfig) -> tuple[torch.device, bool, dict[str, str]]:
    """Step 1: the training device (and whether it runs bfloat16 autocast), the threads and seeds;
    returns them with the hardware record the bundle keeps."""
    device, amp = training_device(cfg.schedule.device, cfg.schedule.mixed_precision)
    torch.set_num_threads(cfg.schedule.threads)
    hardware = training_hardware(device, amp, cfg.schedule.channels_last)  # records the threads: after setting them
    logger.info("training %s on %s", cfg.name, hardware["device"])
    set_determinism(seed=cfg.seed)
    # Seeded, but not torch's deterministic mode: on the CPU it made each U-Net step ten times slower.
    # One thread per fit is bit-for-bit repeatable on the same software anyway (two full runs of the
    # shipped config gave the same weights' sha256).
    torch.use_deterministic_algorithms(False)
    return device, amp, hardware


@dataclass(frozen=True, slots=True)
class _Run:
    """What step 2 prepared: the data, the folds (indices of the backgrounds left out in turn) and
    where and under which digest the run keeps its state."""

    cfg: TrainConfig
    lc: LesionConfig
    backgrounds: list[RealBackground]
    pool: Pool
    val_pool: Pool
    final_val: np.ndarray
    source: ModelCard | None
    spec: InputSpec
    recipe: MapRecipe
    folds: list[int]
    run_dir: Path
    digest: str

    def steps(self, f: int | None) -> int:
        """The optimiser steps of fold ``f``'s fit, or (None) of the final model's."""
        members = members_of(self.cfg, self.pool, held=f)[0]
        return self.cfg.schedule.epochs * max(1, len(members) // self.cfg.schedule.batch_size)

    def fold_file(self, f: int) -> Path:
        """Where fold ``f``'s state is kept (for ``--resume``)."""
        return self.run_dir / "folds" / f"{self.backgrounds[f].id}.json"


def _prepare(cfg: TrainConfig, lc: LesionConfig, device: torch.device, amp: bool, *, folds_only: bool,
             started: float) -> _Run:
    """Step 2: the backgrounds, pools, input normalisation and folds; refuses validation pools that
    cannot place a model's operating points before anything is fitted."""
    backgrounds = load_backgrounds(lc, cfg.data.path)
    logger.info("backgrounds: %s", ", ".join(bg.id for bg in backgrounds))
    n_real = len(backgrounds)
    pool = build_pool(backgrounds, lc, per_background=pictures_per_background(lc, n_real, lc.per_background),
                      generated=lc.generated, seed=cfg.seed, stream=STREAM_TRAIN)
    val_pool = build_pool(backgrounds, lc,
                          per_background=pictures_per_background(lc, n_real, lc.validation_per_background),
                          generated=lc.validation_generated, seed=cfg.seed, stream=STREAM_VALIDATION)
    final_members, _ = members_of(cfg, pool)
    final_val, _ = members_of(cfg, val_pool, validation=True)
    source = init_source(cfg, dense=True)
    spec = dense_input_spec(cfg, pool.images, final_members)
    logger.info("pools ready: %d training, %d validation pictures (%.0f s)", len(pool), len(val_pool),
                time.time() - started)

    folds = [i for i, bg in enumerate(backgrounds) if not bg.real_lesions] if lc.folds != "none" else []
    if folds_only and not folds:
        raise ValueError("folds_only needs the leave-one-background-out folds (lesions.folds)")
    _check_validation(val_pool, [(backgrounds[f].id, as_mask(members_of(cfg, val_pool, validation=True, held=f)[0],
                                                              len(val_pool))) for f in folds]
                      + [("the final model", as_mask(final_val, len(val_pool)))])
    digest = run_digest(cfg, *(hashlib.sha256(np.ascontiguousarray(bg.picture).tobytes()).hexdigest()
                                for bg in backgrounds), f"{device.type} amp={amp}",
                        hashlib.sha256(source.weights_path.read_bytes()).hexdigest() if source else "")
    return _Run(cfg, lc, backgrounds, pool, val_pool, final_val, source, spec, map_recipe(cfg), folds,
                cfg.checkpoint_dir or Path("runs") / cfg.name, digest)


def _check_validation(val_pool: Pool, uses: list[tuple[str, np.ndarray]]) -> None:
    """Before any fitting: each model's validation pictures (``uses``: whose, which) must hold
    pictures with and without nodules, or its calibration and operating points cannot be placed."""
    has = np.asarray([bool(n) for n in val_pool.nodules])
    for whose, keep in uses:
        positives, n = int(has[keep].sum()), int(keep.sum())
        if positives in (0, n):
            raise ValueError(f"the validation pictures for {whose} are {n}, {positives} of them with nodules: "
                             "calibration and the operating points need pictures with and without; raise "
                             "lesions.validation_per_background or lesions.validation_generated")


def _reused_folds(run: _Run) -> dict[int, dict[str, Any]]:
    """``--resume``: the folds a previous run of the same digest finished, by fold."""
    found: dict[int, dict[str, Any]] = {}
    for f in run.folds:
        saved = run.fold_file(f)
        if saved.is_file():
            state = json.loads(saved.read_text())
            if state.get("config") == run.digest:
                found[f] = state
                logger.info("fold %s: reused from %s", run.backgrounds[f].id, saved.name)
    return found


def _fit_all(run: _Run, fold_results: dict[int, dict[str, Any]], *, resume: bool, stop_after_epochs: int | None,
             folds_only: bool) -> bytes | None:
    """Step 3: fit the folds not in ``fold_results`` (each fold's state is added to it and saved as it
    finishes) and, unless ``folds_only``, the final model, whose weights are returned. Raises
    :class:`FitInterrupted` when ``stop_after_epochs`` stopped the fits."""
    cfg = run.cfg
    todo = [f for f in run.folds if f not in fold_results]
    total = sum(run.steps(f) for f in run.folds) + (0 if folds_only else run.steps(None))
    reused = sum(run.steps(f) for f in fold_results)
    data = FitData(cfg, run.pool, run.val_pool, run.backgrounds, run.spec, run.digest,
                   FitCheckpoints(run.run_dir / "fits", run.digest, resume, stop_after_epochs))
    with training_progress() as progress:
        what = f"{len(todo)} folds" + ("" if folds_only else " and the final model")
        task = progress.add_task(f"training {cfg.name} ({what})", total=total, completed=reused)

        def fold_done(f: int, state: dict[str, Any]) -> None:  # kept at once, for --resume
            saved = run.fold_file(f)
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(state))
            fold_results[f] = state

        workers = max(1, min(cfg.schedule.workers, len(todo) + (0 if folds_only else 1)))
        if workers > 1:
            return fit_in_processes(data, todo, workers, run.run_dir, fold_done,
                                    lambda done: progress.update(task, completed=reused + done), final=not folds_only)

        def advance() -> None:
            progress.advance(task)

        for f in todo:
            fold_done(f, fit_fold(data, f, advance))
        return None if folds_only else state_dict_bytes(fit_final(data, advance))


def _write_leave_one_out(run: _Run, held_out: dict[str, Any], *, config_path: Path | None, started: float,
                         hardware: dict[str, str]) -> dict[str, Any]:
    """``folds_only``: the recipe's pooled leave-one-out figures, written to
    ``<checkpoint_dir>/leave-one-out.json`` and returned; no model."""
    cfg = run.cfg
    summary = {"name": cfg.name, "config": str(config_path) if config_path else None, "seed": cfg.seed,
               "fold_backgrounds": run.lc.fold_backgrounds, "seconds": round(time.time() - started), **held_out,
               "training_hardware": hardware}
    out_file = run.run_dir / "leave-one-out.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("wrote the leave-one-out figures to %s in %.0f s (no bundle: folds only)", out_file,
                time.time() - started)
    return summary


def _final_metrics(run: _Run, network: torch.nn.Module,
                   held_out: dict[str, Any]) -> tuple[Scored, Calibration, dict[str, Any]]:
    """Step 4: the shipped model scored on its validation pictures and calibrated there, then tested
    on new generated chests; its metrics, with the pooled folds (``held_out``) as the ``test``
    headline (the generated-chest test without folds), and the calibrated probability of each real
    background with real lesions."""
    cfg, lc, spec, recipe = run.cfg, run.lc, run.spec, run.recipe
    val = score_set(network, eval_members(run.val_pool, run.final_val), spec, lc, recipe)
    cal = calibrate(val, cfg)
    metrics: dict[str, Any] = {
        "validation": localisation_metrics(val, cal, seed=cfg.seed),
        "test_generated": localisation_metrics(score_set(network, generated_test_set(lc, spec, seed=cfg.seed), spec, lc,
                                                         recipe), cal, seed=cfg.seed),
    }
    metrics.update(held_out or {"test": metrics["test_generated"]})
    real = [bg for bg in run.backgrounds if bg.real_lesions]
    if real:
        inputs = torch.stack([prepare_frame(bg.picture, spec)[0] for bg in real])
        maps = predict_maps(network, inputs, recipe=recipe)
        probs = cal.probability(study_logits(torch.from_numpy(maps)[:, None])[:, 0].astype(np.float64))
        metrics["real_lesion_backgrounds"] = {bg.id: round(float(p), 4) for bg, p in zip(real, probs, strict=True)}
    return val, cal, metrics
