"""A nodule localiser trained and measured on REAL nodules: JSRT (``data.kind: jsrt``).

The recipe is the dense one of :mod:`~secondreader.training.dense` (the same U-Net fit, map,
peaks, calibration and served predictor); what changes is the data and the test:

- training pictures are augmented JSRT films with their real nodule as the target, plus JSRT normal
  films and NIH no-finding films of training patients, half of them given simulated (model A)
  nodules in their lungs;
- the figures come from k-fold cross-validation over the JSRT films: each fold's model trains on
  k - 2 folds, is calibrated (and given its operating point) on the next fold, and is tested on its
  own fold, so no film is both trained on and tested, and no test film chooses a threshold;
- the test truth is JSRT's own: one real nodule per nodule film (centre and radius), scored by
  study AUROC, lesion FROC, sensitivity by subtlety and size, and false regions on normal films.

The shipped model trains on every fold but ``validation_fold`` and is calibrated on that one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism

from ..model.network import build_network
from ..preprocessing import InputSpec
from ..stats import Rate
from .common import (
    device_uid_for,
    init_source,
    scope_and_mode,
    state_dict_bytes,
    training_device,
    training_hardware,
    write_bundle_weights,
)
from .config import CalibrationConfig, LesionConfig, OperatingPointConfig, RealNoduleConfig, TrainConfig, run_digest
from .dense.bundle import dense_metadata
from .dense.data import EvalSet, Pool, insert_a_nodules, load_pool, save_pool
from .dense.evaluate import (
    Calibration,
    Scored,
    cal_scores,
    calibrate,
    localisation_metrics,
    pool_folds,
    predict_maps,
    score_set,
)
from .dense.fit import fit_dense_network, map_recipe
from .dense.inputs import dense_input_spec, standardise
from .froc import ImageDetections, froc_threshold
from .lesions import (
    Nodule,
    augment_geometry,
    density_gain,
    discs,
    insert_distractors,
    load_background,
    lung_mask,
    square_picture,
)
from .plots import reliability_png
from .realdata import JSRT_MM_PER_PX, JsrtFilm, jsrt_folds, load_jsrt, load_nih, nih_split

logger = logging.getLogger(__name__)

__all__ = ["SIZE_BANDS_MM", "train_real_nodules"]

#: Nodule diameter bands (mm) of the sensitivity breakdown.
SIZE_BANDS_MM = (0.0, 10.0, 15.0, 20.0, 30.0)


def _sections(cfg: TrainConfig) -> tuple[LesionConfig, RealNoduleConfig]:
    if cfg.lesions is None or cfg.real_nodules is None:
        raise ValueError("data.kind jsrt needs a lesions: section (the dense recipe's crops and augmentation) and "
                         "a real_nodules: section")
    if cfg.real_nodules.validation_fold >= cfg.real_nodules.folds:
        raise ValueError(f"real_nodules.validation_fold {cfg.real_nodules.validation_fold} is not one of the "
                         f"{cfg.real_nodules.folds} folds")
    return cfg.lesions, cfg.real_nodules


def load_normals(rc: RealNoduleConfig, side: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """NIH no-finding films of training patients (never a test patient of the adult pneumonia model):
    ``(id, picture, lungs)`` on the model grid, lungs estimated from the picture."""
    if rc.normals_path is None:
        return []
    films = [f for f in load_nih(rc.normals_path) if f.label == 0 and nih_split(f.patient_id) == "train"
             and "Nodule" not in f.labels and "Mass" not in f.labels]
    if rc.max_normals is not None:
        films = films[: rc.max_normals]
    out = []
    for f in films:
        picture = square_picture(load_background(f.path), side)
        out.append((Path(f.id).stem, picture, lung_mask(picture)))
    return out


def build_real_pool(films: list[JsrtFilm], normals: list[tuple[str, np.ndarray, np.ndarray]], lc: LesionConfig,
                    rc: RealNoduleConfig, seed: int) -> Pool:
    """Augmented training pictures: ``copies`` of each JSRT film (group = its index) with its real
    nodule as the target, and ``normal_copies`` of each extra normal film (group -1). Normal
    pictures get simulated model-A nodules in ``insert_fraction`` of cases."""
    side = lc.input_size
    n = len(films) * rc.copies + len(normals) * rc.normal_copies
    pool = Pool(np.zeros((n, side, side), np.float16), np.zeros((n, side, side), np.uint8),
                np.ones((n, side, side), np.uint8), np.zeros(n, np.int16), [])
    sources = [(g, f.picture, f.lungs, f.nodule, rc.copies) for g, f in enumerate(films)]
    sources += [(-1 - k, picture, lungs, None, rc.normal_copies) for k, (_, picture, lungs) in enumerate(normals)]
    k = 0
    for group, picture, lungs, nodule, copies in sources:
        truth = discs((side, side), [(nodule[0] / side, nodule[1] / side, nodule[2] / side)]) if nodule \
            else np.zeros((side, side), bool)
        rngs = [np.random.default_rng([seed, 11, group + 100_000, j]) for j in range(copies)]
        pictures, masks = augment_geometry(picture, np.stack([lungs, truth]), rngs, side, scale=lc.scale,
                                           rotate_deg=lc.rotate_deg, translate=lc.translate, elastic=lc.elastic)
        for rng, out, (lung, target) in zip(rngs, pictures, masks, strict=True):
            if lc.density_field > 0:
                out[:] = density_gain(out, rng, lc.density_field)
            if rng.random() < lc.distractor_fraction:
                insert_distractors(out, rng, int(rng.integers(1, 5)))
            nodules: list[Nodule] = []
            if nodule is not None:
                if target.any():
                    rows, cols = np.nonzero(target)
                    nodules = [Nodule(float(rows.mean()), float(cols.mean()), max(0.5, math.sqrt(len(rows) / math.pi)),
                                      0.0, "A")]
            elif rng.random() < rc.insert_fraction and lung.any():
                nodules, target = insert_a_nodules(out, lung, rng, lc)
            pool.images[k] = out
            pool.targets[k] = target
            pool.groups[k] = max(group, -1)
            pool.nodules.append(nodules)
            k += 1
    return pool


def film_eval_set(films: list[JsrtFilm]) -> EvalSet:
    """Untouched films (the serving chain's picture on the model grid) with their real nodules."""
    return EvalSet(torch.from_numpy(np.stack([f.picture for f in films]))[:, None],
                   [[Nodule(f.nodule[0], f.nodule[1], f.nodule[2], 0.0, "A")] if f.nodule else [] for f in films],
                   normalised=False)


def _members(pool: Pool, train_films: np.ndarray) -> np.ndarray:
    return np.nonzero((pool.groups < 0) | np.isin(pool.groups, train_films))[0]


# -- one fit, in this process or a worker ---------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(cfg: TrainConfig, films: list[JsrtFilm], folds: np.ndarray, spec: InputSpec, pool_dir: str,
                 digest: str) -> None:
    torch.set_num_threads(cfg.schedule.threads)
    set_determinism(seed=cfg.seed)
    torch.use_deterministic_algorithms(False)
    _WORKER.update(cfg=cfg, films=films, folds=folds, spec=spec, pool=load_pool(Path(pool_dir)), digest=digest)


def _fit(fold: int | None) -> dict[str, Any]:
    """Fold ``fold``'s state (its calibration and its test set scored), or with None the shipped
    model's weights and its calibration."""
    cfg: TrainConfig = _WORKER["cfg"]
    films: list[JsrtFilm] = _WORKER["films"]
    folds: np.ndarray = _WORKER["folds"]
    spec: InputSpec = _WORKER["spec"]
    pool: Pool = _WORKER["pool"]
    lc, rc = _sections(cfg)
    recipe = map_recipe(cfg)
    t0 = time.time()
    val_fold = rc.validation_fold if fold is None else (fold + 1) % rc.folds
    held = {val_fold} if fold is None else {fold, val_fold}
    train_films = np.asarray([i for i in range(len(films)) if int(folds[i]) not in held], np.int64)
    seed = cfg.seed if fold is None else cfg.seed + 1000 * (fold + 1)
    network = fit_dense_network(cfg, pool, _members(pool, train_films), spec, seed, lambda: None,
                                name="final" if fold is None else f"fold-{fold}")
    val_films = [f for i, f in enumerate(films) if folds[i] == val_fold]
    val = score_set(network, film_eval_set(val_films), spec, lc, recipe)
    cal = calibrate(val, cfg)
    state: dict[str, Any] = {"config": _WORKER["digest"], "calibration": cal.to_json(),
                             "validation": val.to_json(), "validation_films": [f.id for f in val_films]}
    if fold is None:
        state["weights"] = state_dict_bytes(network).hex()
    else:
        test_films = [f for i, f in enumerate(films) if folds[i] == fold]
        scored = score_set(network, film_eval_set(test_films), spec, lc, recipe).to_json()
        scored.pop("nodules")  # no simulated contrast bands: real nodules are broken down by subtlety and size
        state.update(background=f"fold {fold + 1}", test=scored, films=[f.id for f in test_films])
    state["seconds"] = round(time.time() - t0, 1)
    logger.info("fit %s done in %.0f s", "final" if fold is None else f"fold {fold + 1}", state["seconds"])
    return state


def fit_digest(cfg: TrainConfig, films: list[JsrtFilm], normals: list[tuple[str, np.ndarray, np.ndarray]],
               device: str) -> str:
    """What a saved fit (a fold's or the final model's state) depends on, for ``--resume``: the
    configuration less what only scores the fits afterwards (operating point, calibration, targets,
    scope), the pictures, the device kind, the installed numeric libraries and the code the fits run
    (the dense recipe's modules and this module's pool and fit functions). An edit to the card, the
    CLI or serving keeps the fits; an edit to what fits or scores them refits."""
    import inspect

    relevant = cfg.model_copy(update={"operating_point": OperatingPointConfig(), "calibration": CalibrationConfig(),
                                      "targets": {}, "scope": None})
    package = Path(__file__).resolve().parents[1]
    code = [(package / name).read_text() for name in _FIT_MODULES]
    code += [inspect.getsource(fn) for fn in (load_normals, build_real_pool, film_eval_set, _members, _fit)]
    return run_digest(relevant, *(hashlib.sha256(np.ascontiguousarray(f.picture).tobytes()).hexdigest() for f in films),
                      *(hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest() for _, p, _ in normals),
                      device, hashlib.sha256("\0".join(code).encode()).hexdigest(), with_code=False)


#: The package's modules a real-nodule fit and its scoring run (besides this module's fit functions).
_FIT_MODULES = ("training/dense/data.py", "training/dense/inputs.py", "training/dense/augment.py",
                "training/dense/fit.py", "training/dense/evaluate.py", "training/common.py", "training/lesions.py",
                "training/losses.py", "training/realdata.py", "training/froc.py", "model/dense.py", "model/network.py",
                "preprocessing.py", "scoring/calibration.py")


# -- figures --------------------------------------------------------------------------------------

def _rate(hits: np.ndarray) -> dict[str, Any]:
    rate = Rate(int(hits.sum()), int(hits.size))
    return {"n": int(hits.size), "hits": rate.count, "sensitivity": round(rate.value or 0.0, 4),
            "sensitivity_ci95": [round(v, 4) for v in rate.interval]}


def real_nodule_breakdown(states: list[dict[str, Any]], films: dict[str, JsrtFilm]) -> dict[str, Any]:
    """Pooled over the folds (each calibrated by its own validation fold): sensitivity at the pooled
    FROC point of 1 false region per image by subtlety and by diameter, and the false regions per
    image on normal films at each fold's operating point and at that FROC point."""
    images: list[ImageDetections] = []
    meta: list[JsrtFilm] = []
    at_op_false, at_op_hit = [], []
    for state in states:
        cal = Calibration.from_json(state["calibration"])
        scored = Scored.from_json(state["test"])
        for film_id, im in zip(state["films"], scored.images, strict=True):
            cal_im = ImageDetections(cal_scores(im.lesion_scores, cal), cal_scores(im.false_scores, cal))
            images.append(cal_im)
            meta.append(films[film_id])
            at_op_false.append(int((cal_im.false_scores >= cal.operating_point).sum()))
            if cal_im.lesion_scores.size:
                at_op_hit.append(bool(cal_im.lesion_scores[0] >= cal.operating_point))
    threshold = froc_threshold(images, 1.0)
    positive = [(im, f) for im, f in zip(images, meta, strict=True) if f.nodule is not None]
    hits = np.asarray([bool(im.lesion_scores[0] >= threshold) for im, _ in positive])
    subtlety = np.asarray([f.subtlety for _, f in positive])
    size = np.asarray([f.diameter_mm for _, f in positive])
    bands = list(SIZE_BANDS_MM) + [math.inf]
    normal = [im for im, f in zip(images, meta, strict=True) if f.nodule is None]
    false_op = np.asarray([n for n, f in zip(at_op_false, meta, strict=True) if f.nodule is None])
    return {
        "at_1_false_region_per_image": {
            "threshold": "each image's calibrated scores against the pooled FROC point (1 false region per image)",
            "by_subtlety": {str(s): _rate(hits[subtlety == s]) for s in range(1, 6) if (subtlety == s).any()},
            "by_diameter_mm": {(f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}"):
                               _rate(hits[(size >= lo) & (size < hi)])
                               for lo, hi in zip(bands[:-1], bands[1:], strict=True)
                               if ((size >= lo) & (size < hi)).any()},
            "false_regions_per_normal_film": round(float(np.mean([(im.false_scores >= threshold).sum()
                                                                  for im in normal])), 4) if normal else None,
        },
        "at_operating_point": {
            "lesion_sensitivity": _rate(np.asarray(at_op_hit)),
            "false_regions_per_normal_film": round(float(false_op.mean()), 4) if false_op.size else None,
            "false_regions_per_image": round(float(np.mean(at_op_false)), 4),
        },
    }


def validation_films(val: Scored, cal: Calibration, films: list[JsrtFilm]) -> list[dict[str, Any]]:
    """The shipped model on each film of its validation fold (never trained on): its calibrated study
    probability, whether the study is flagged, and whether a region at the operating point hits the
    real nodule. Tests screen these films through the served pipeline and expect the same."""
    out = []
    p = cal.probability(val.logits)
    for film, prob, im in zip(films, p, val.images, strict=True):
        row: dict[str, Any] = {"id": film.id, "nodule": film.nodule is not None, "probability": round(float(prob), 4),
                               "flagged": bool(prob >= cal.operating_point)}
        if film.nodule is not None:
            hit = cal_scores(im.lesion_scores, cal)
            row.update(subtlety=film.subtlety, diameter_mm=film.diameter_mm,
                       found=bool(hit.size and hit[0] >= cal.operating_point))
        out.append(row)
    return out


def nih_review_rate(network: torch.nn.Module, cal: Calibration, rc: RealNoduleConfig, lc: LesionConfig,
                    spec: InputSpec, cfg: TrainConfig) -> dict[str, Any] | None:
    """The shipped model's review rate on normal adult films it never saw: the NIH no-finding films
    of the test patients (the adult pneumonia model's test split), at the operating point."""
    if rc.normals_path is None:
        return None
    films = [f for f in load_nih(rc.normals_path) if f.label == 0 and nih_split(f.patient_id) == "test"]
    if not films:
        return None
    pictures = torch.from_numpy(np.stack([square_picture(load_background(f.path), lc.input_size) for f in films]))
    maps = predict_maps(network, standardise(pictures[:, None], spec), recipe=map_recipe(cfg))
    p = cal.probability(maps.reshape(len(maps), -1).max(axis=1).astype(np.float64))
    flagged = p >= cal.operating_point
    rate = Rate(int(flagged.sum()), len(flagged))
    return {"n": len(films), "flagged": int(flagged.sum()), "rate": round(rate.value or 0.0, 4),
            "rate_ci95": [round(v, 4) for v in rate.interval],
            "films": "NIH ChestX-ray14 no-finding films of the test patients (never trained on)"}


# -- the whole run --------------------------------------------------------------------------------

def train_real_nodules(cfg: TrainConfig, *, config_path: Path | None = None, resume: bool = False,
                       stop_after_epochs: int | None = None, folds_only: bool = False) -> dict[str, Any]:
    """Cross-validate the recipe on JSRT's real nodules, fit the shipped model, write its bundle to
    ``cfg.output_dir``. ``resume`` reuses the folds a previous run of the same configuration kept in
    ``checkpoint_dir``; ``folds_only`` stops after the folds (figures in ``<checkpoint_dir>/folds.json``).
    Returns the bundle's metadata (``{"folds": figures}`` with ``folds_only``)."""
    if stop_after_epochs is not None:
        raise ValueError("--stop-after-epochs is not supported by data.kind jsrt; use --resume to reuse "
                         "finished folds")
    lc, rc = _sections(cfg)
    started = time.time()
    device, amp = training_device(cfg.schedule.device, cfg.schedule.mixed_precision)
    torch.set_num_threads(cfg.schedule.threads)
    hardware = training_hardware(device, amp, cfg.schedule.channels_last)
    set_determinism(seed=cfg.seed)
    torch.use_deterministic_algorithms(False)
    side = lc.input_size
    films = load_jsrt(cfg.data.path, side, limit=rc.limit)
    folds = jsrt_folds(films, rc.folds, cfg.seed)
    normals = load_normals(rc, side)
    pool = build_real_pool(films, normals, lc, rc, cfg.seed)
    logger.info("%d JSRT films (%d with a real nodule), %d extra normal films, %d training pictures (%.0f s)",
                len(films), sum(f.nodule is not None for f in films), len(normals), len(pool), time.time() - started)
    spec = dense_input_spec(cfg, pool.images, np.arange(len(pool)))
    source = init_source(cfg, dense=True)
    digest = fit_digest(cfg, films, normals, f"{device.type} amp={amp}" + (
        f" init={hashlib.sha256(source.weights_path.read_bytes()).hexdigest()}" if source is not None else ""))
    run_dir = cfg.checkpoint_dir or Path("runs") / cfg.name
    (run_dir / "folds").mkdir(parents=True, exist_ok=True)
    states: dict[int, dict[str, Any]] = {}
    final: dict[str, Any] | None = None

    def state_file(f: int | None) -> Path:
        return run_dir / "folds" / ("final.json" if f is None else f"fold-{f + 1}.json")

    for f in [*range(rc.folds), None]:
        saved = state_file(f)
        if resume and saved.is_file() and json.loads(saved.read_text()).get("config") == digest:
            if f is None:
                final = json.loads(saved.read_text())
            else:
                states[f] = json.loads(saved.read_text())
            logger.info("%s: reused from %s", "the final fit" if f is None else f"fold {f + 1}", saved)
    todo: list[int | None] = [f for f in range(rc.folds) if f not in states]
    if not folds_only and final is None:
        todo.append(None)
    pool_dir = run_dir / "pool"
    args = (cfg, films, folds, spec, str(pool_dir), digest)
    workers = max(1, min(cfg.schedule.workers, len(todo)))
    import multiprocessing

    if todo:
        save_pool(pool, pool_dir)
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=args) as executor:
                futures = {executor.submit(_fit, f): f for f in todo}
                for future, f in futures.items():
                    state = future.result()
                    state_file(f).write_text(json.dumps(state))  # kept at once, for --resume
                    if f is None:
                        final = state
                    else:
                        states[f] = state
        finally:
            shutil.rmtree(pool_dir, ignore_errors=True)  # the pictures' memory-mapped copy (hundreds of MB)
    # each fold's calibration and operating point from its saved validation scores, by the config's rule
    # now (a new rule re-scores the folds without refitting them)
    ordered = [{**states[f], "calibration": calibrate(Scored.from_json(states[f]["validation"]), cfg).to_json()}
               for f in range(rc.folds)]
    pooled, per_fold = pool_folds(ordered, seed=cfg.seed, side=side)
    pooled["method"] = (f"{rc.folds}-fold cross-validation over the JSRT films (stratified by nodule): each fold's "
                        f"model trained on {rc.folds - 2} folds, calibrated on the next, tested on its own; REAL "
                        "nodules (JSRT's centre and radius)")
    by_id = {f.id: f for f in films}
    pooled["real_nodules"] = real_nodule_breakdown(ordered, by_id)
    metrics: dict[str, Any] = {"test": pooled, "folds": per_fold}
    achieved = {"study_auroc": float(pooled["study"]["auroc"]),
                "froc_1": float(pooled["froc"]["sensitivity"]["1.0"])}
    logger.info("cross-validated on real nodules: study AUROC %.3f, FROC sensitivity at 1 false region per image "
                "%.3f", achieved["study_auroc"], achieved["froc_1"])
    if folds_only:
        summary = {"name": cfg.name, "seed": cfg.seed, "seconds": round(time.time() - started), **metrics,
                   "training_hardware": hardware}
        (run_dir / "folds.json").write_text(json.dumps(summary, indent=2) + "\n")
        return {"folds": summary}
    assert final is not None
    weights = bytes.fromhex(final["weights"])
    network = build_network(cfg.network.class_, cfg.network.args, dense=True)
    network.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    network.eval()
    val = Scored.from_json(final["validation"])
    cal = calibrate(val, cfg)
    metrics["validation"] = localisation_metrics(val, cal, seed=cfg.seed)
    metrics["validation"]["films"] = validation_films(val, cal, [by_id[i] for i in final["validation_films"]])
    review = nih_review_rate(network, cal, rc, lc, spec, cfg)
    if review is not None:
        metrics["nih_normal_review_rate"] = review
    out = cfg.output_dir
    weights_sha256 = write_bundle_weights(out, weights)
    metadata = dense_metadata(cfg, spec, cal, metrics, device_uid_for(cfg.name, cfg.version, weights_sha256),
                              weights_sha256, config_path, time.time() - started, [], hardware)
    sr = metadata["secondreader"]
    sr.update(scope_and_mode(cfg, achieved))
    sr["training"].pop("backgrounds", None)
    sr["training"]["real_nodules"] = rc.model_dump(mode="json")
    sr["training"]["data"] = {
        "jsrt_films": len(films), "jsrt_nodules": sum(f.nodule is not None for f in films),
        "extra_normal_films": len(normals), "pictures": len(pool), "mm_per_model_pixel": round(
            JSRT_MM_PER_PX * 1024 / side, 3),
        "folds": {f.id: int(folds[i]) + 1 for i, f in enumerate(films)}}
    curves = {"validation fold (shipped model)": (cal.probability(val.logits), val.labels)}
    held = [(Calibration.from_json(s["calibration"]), Scored.from_json(s["test"])) for s in ordered]
    curves["cross-validation test folds"] = (np.concatenate([c.probability(s.logits) for c, s in held]),
                                             np.concatenate([s.labels for _, s in held]))
    reliability_png(out / "docs" / "reliability.png", curves)
    sr["calibration_plot"] = "docs/reliability.png"
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    from .modelcard_real import write_real_nodule_card

    write_real_nodule_card(out / "docs" / "README.md", metadata)
    logger.info("wrote bundle %s in %.0f s", cfg.name, time.time() - started)
    return metadata
