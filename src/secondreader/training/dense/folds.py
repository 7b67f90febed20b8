"""A dense run's fits: the leave-one-background-out folds and the final model, in this process or
side by side in ``schedule.workers`` spawned worker processes.

:func:`fit_fold` trains without one real background, calibrates on validation without it and tests
on it (model-B nodules); :func:`fit_final` trains the shipped model on every training picture.
:func:`fit_in_processes` runs them in worker processes that receive the pools once, as
memory-mapped files; each fit is seeded as in one process, so the weights do not depend on the
number of workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.utils import set_determinism

from ...preprocessing import InputSpec
from ..common import state_dict_bytes
from ..config import TrainConfig
from ..lesions import RealBackground
from .data import EvalSet, Pool, background_test_set, eval_members, load_pool, members_of, save_pool
from .evaluate import calibrate, score_set
from .fit import FitCheckpoints, fit_dense_network, map_recipe

__all__ = ["FitData", "fit_final", "fit_fold", "fit_in_processes"]


@dataclass(frozen=True, slots=True)
class FitData:
    """What every fit of one run needs (a worker process gets it once, the pools memory-mapped)."""

    cfg: TrainConfig
    pool: Pool
    val_pool: Pool
    backgrounds: list[RealBackground]
    spec: InputSpec
    digest: str
    checkpoints: FitCheckpoints | None = None


def fit_fold(data: FitData, f: int, advance: Callable[[], None]) -> dict[str, Any]:
    """Leave background ``f`` out: train without it, calibrate on validation without it, test on
    it with model-B nodules. Returns the fold's state (kept as JSON, reused by ``--resume``)."""
    cfg, pool, val_pool, spec = data.cfg, data.pool, data.val_pool, data.spec
    lc = cfg.lesions
    assert lc is not None
    recipe = map_recipe(cfg)
    held = data.backgrounds[f]
    t0 = time.time()
    members, trained_on = members_of(cfg, pool, held=f)
    network = fit_dense_network(cfg, pool, members, spec, cfg.seed + 1000 * (f + 1), advance, data.checkpoints,
                                f"fold-{held.id}")
    val = score_set(network, eval_members(val_pool, members_of(cfg, val_pool, validation=True, held=f)[0]), spec,
                    lc, recipe)
    cal = calibrate(val, cfg)
    test = background_test_set(lc, data.backgrounds, f, spec, seed=cfg.seed)
    scored = score_set(network, test, spec, lc, recipe)
    state = {"config": data.digest, "background": held.id, "seconds": round(time.time() - t0, 1),
             "calibration": cal.to_json(), "test": scored.to_json()}
    if lc.fold_backgrounds is not None:
        state["trained_on"] = [data.backgrounds[g].id for g in trained_on]
    if held.unknown is not None:  # also scored as if the real opacity were known to be no nodule
        strict = EvalSet(test.inputs, test.nodules, normalised=True)
        state["test_strict"] = score_set(network, strict, spec, lc, recipe).to_json()
    return state


_WORKER: dict[str, Any] = {}


def _worker_init(cfg: TrainConfig, backgrounds: list[RealBackground], spec: InputSpec, digest: str, folder: str,
                 checkpoints: FitCheckpoints | None, counter: Any) -> None:
    torch.set_num_threads(cfg.schedule.threads)
    set_determinism(seed=cfg.seed)
    torch.use_deterministic_algorithms(False)
    logging.getLogger("secondreader").setLevel(logging.WARNING)  # the parent reports progress
    _WORKER["data"] = FitData(cfg, load_pool(Path(folder) / "train"), load_pool(Path(folder) / "validation"),
                               backgrounds, spec, digest, checkpoints)
    _WORKER["counter"] = counter


def _worker_advance() -> None:
    counter = _WORKER["counter"]
    with counter.get_lock():
        counter.value += 1


def _worker_fold(f: int) -> dict[str, Any]:
    return fit_fold(_WORKER["data"], f, _worker_advance)


def _worker_final() -> bytes:
    data: FitData = _WORKER["data"]
    return state_dict_bytes(fit_final(data, _worker_advance))


def fit_final(data: FitData, advance: Callable[[], None]) -> torch.nn.Module:
    """The shipped model: every training picture (of a larger learning-curve pool, the ordinary pool's)."""
    members, _ = members_of(data.cfg, data.pool)
    return fit_dense_network(data.cfg, data.pool, members, data.spec, data.cfg.seed, advance, data.checkpoints,
                             "final")


def fit_in_processes(data: FitData, folds: list[int], workers: int, run_dir: Path,
                      fold_done: Callable[[int, dict[str, Any]], None], progress: Callable[[int], None], *,
                      final: bool = True) -> bytes | None:
    """The final model's weights (None without ``final``), fitted beside the folds (each fold's
    state goes to ``fold_done`` as it finishes) in ``workers`` spawned processes with
    ``schedule.threads`` threads each; the pools reach them as memory-mapped files under
    ``run_dir``. Every fit is seeded as in one process, so the result does not depend on ``workers``."""
    import multiprocessing
    import shutil
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    folder = run_dir / "pools"
    save_pool(data.pool, folder / "train")
    save_pool(data.val_pool, folder / "validation")
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                 initargs=(data.cfg, data.backgrounds, data.spec, data.digest, str(folder),
                                           data.checkpoints, counter)) as executor:
            final_fit = executor.submit(_worker_final) if final else None
            by_fold = {executor.submit(_worker_fold, f): f for f in folds}
            pending: set[Future[Any]] = {*by_fold} | ({final_fit} if final_fit is not None else set())
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                progress(int(counter.value))
                for future in done:
                    if future in by_fold:
                        fold_done(by_fold[future], future.result())
            return final_fit.result() if final_fit is not None else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
