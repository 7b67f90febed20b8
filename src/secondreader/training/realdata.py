"""The real adult radiographs of ``../shared/data``: JSRT (real nodules) and NIH pneumonia films.

Both are read in place (never copied into the project) and split the same way on every machine:
JSRT films into stratified cross-validation folds, NIH films by patient (a SHA-256 of the patient
id), so that no patient is in two parts and the nodule model's extra normal backgrounds come from
the same training patients as the adult pneumonia model's.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import Split
from .lesions import load_background, square_picture

__all__ = ["JsrtFilm", "NihFilm", "jsrt_folds", "load_jsrt", "load_nih", "load_nih_splits", "nih_split",
           "nih_split_films",
           "nih_test_breakdown"]

#: JSRT's PNGs here are the 2048 px originals halved: 0.35 mm per pixel.
JSRT_MM_PER_PX = 0.35


@dataclass(frozen=True, slots=True)
class JsrtFilm:
    """One JSRT film: ``picture`` float32 (S, S) in [0, 1] on the model grid; ``lungs`` bool (S, S)
    (SCR lung fields: they leave out nodules behind the heart or below the diaphragm, so they only
    place simulated nodules, never filter the truth); the real nodule's ``(row, col, radius)`` on
    the model grid, or None; its diameter in mm and subtlety (1 extremely subtle ... 5 obvious)."""

    id: str
    picture: np.ndarray
    lungs: np.ndarray
    nodule: tuple[float, float, float] | None
    diameter_mm: float
    subtlety: int
    age: int | None


@dataclass(frozen=True, slots=True)
class NihFilm:
    id: str
    path: Path
    label: int  # 1 pneumonia, 0 no finding
    patient_id: str
    age: int
    sex: str
    view: str
    labels: str  # all NIH labels of the image


def _png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return load_background(path)


def load_jsrt(root: Path, side: int, *, limit: int | None = None) -> list[JsrtFilm]:
    """Every film of ``root/nodules.csv`` (``root``: the ``jsrt`` folder) on a ``side`` px grid,
    through the serving chain's centre square crop and area resize."""
    table = root / "nodules.csv"
    if not table.is_file():
        raise FileNotFoundError(f"JSRT table not found: {table}")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if limit is not None:  # smoke tests: the first films of each kind
        rows = [r for r in rows if r["has_nodule"] == "1"][: limit // 2] + \
               [r for r in rows if r["has_nodule"] != "1"][: limit - limit // 2]
    films = []
    for row in rows:
        raw = _png(root / "images" / row["image"])
        if raw.shape[0] != raw.shape[1]:
            raise ValueError(f"JSRT image {row['image']} is {raw.shape[1]}x{raw.shape[0]}, not square")
        scale = side / raw.shape[0]
        lung_file = root / "lung_masks" / row["image"]
        lungs = (square_picture((_png(lung_file) > 0).astype(np.float32), side) > 0.5 if lung_file.is_file()
                 else np.zeros((side, side), bool))
        nodule = None
        if row["has_nodule"] == "1":
            # pixel centres kept: (x + 0.5) * scale - 0.5
            nodule = ((float(row["y_px"]) + 0.5) * scale - 0.5, (float(row["x_px"]) + 0.5) * scale - 0.5,
                      float(row["radius_px"]) * scale)
        films.append(JsrtFilm(
            id=Path(row["image"]).stem, picture=square_picture(raw, side), lungs=lungs, nodule=nodule,
            diameter_mm=float(row["diameter_mm"] or 0), subtlety=int(float(row["subtlety"] or 0)),
            age=int(float(row["age"])) if row.get("age") else None))
    return films


def jsrt_folds(films: list[JsrtFilm], k: int, seed: int) -> np.ndarray:
    """Each film's fold (0..k-1): films with and without a nodule shuffled apart from ``seed`` and
    dealt round-robin, so every fold holds about the same share of each."""
    fold = np.zeros(len(films), np.int64)
    rng = np.random.default_rng([seed, 7])
    for has in (True, False):
        idx = np.asarray([i for i, f in enumerate(films) if (f.nodule is not None) == has], np.int64)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = np.arange(len(idx)) % k
    return fold


def nih_split(patient_id: str) -> str:
    """``train`` (60%), ``val`` (20%) or ``test`` (20%) of a NIH patient: a SHA-256 of the id alone,
    so the split is the same for every model and machine."""
    bucket = int(hashlib.sha256(f"nih-patient:{patient_id}".encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 6 else "val" if bucket < 8 else "test"


def load_nih(root: Path) -> list[NihFilm]:
    """The rows of ``root/labels.csv`` (``root``: the ``nih-pneumonia`` folder)."""
    table = root / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"NIH pneumonia table not found: {table}")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    films = []
    for row in rows:
        if row["label"] not in ("pneumonia", "no_finding"):
            raise ValueError(f"{table.name}: image {row['image']} has label {row['label']!r}, not pneumonia or "
                             "no_finding")
        films.append(NihFilm(row["image"], root / "images" / row["image"], int(row["label"] == "pneumonia"),
                             row["patient_id"], int(row["age"]), row["sex"], row["view"], row["nih_labels"]))
    return films


def nih_split_films(films: list[NihFilm], split: str, limit: int | None = None) -> list[NihFilm]:
    """The films of one split in file order (``limit``: N evenly spaced ones, for smoke tests)."""
    part = [f for f in films if nih_split(f.patient_id) == split]
    if limit is not None and limit < len(part):
        keep = np.unique(np.linspace(0, len(part) - 1, limit).round().astype(np.int64))
        part = [part[i] for i in keep]
    return part


def nih_test_breakdown(root: Path, probabilities: np.ndarray, operating_point: float, *, limit: int | None,
                       seed: int) -> dict[str, dict[str, object]]:
    """The test split's figures (``probabilities``: calibrated, in split order) by view (PA, AP) and
    by age group, at the operating point."""
    from .metrics import binary_metrics

    films = nih_split_films(load_nih(root), "test", limit)
    if len(films) != len(probabilities):
        raise ValueError(f"{len(probabilities)} test probabilities for {len(films)} test films")
    labels = np.asarray([f.label for f in films])
    groups = {f"view {v}": np.asarray([f.view == v for f in films]) for v in ("PA", "AP")}
    groups["age 18 and over"] = np.asarray([f.age >= 18 for f in films])
    groups["age under 18"] = ~groups["age 18 and over"]
    out: dict[str, dict[str, object]] = {}
    for name, keep in groups.items():
        if keep.sum() and len(np.unique(labels[keep])) == 2:
            out[name] = binary_metrics(probabilities[keep], labels[keep], operating_point, seed=seed).to_json()
    return out


def load_nih_splits(root: Path, side: int, *, limit: int | None = None) -> tuple[dict[str, Split],
                                                                                  dict[str, list[NihFilm]]]:
    """The NIH films as train/val/test :class:`Split` s (pictures in [0, 1] on a ``side`` grid,
    label 1 = pneumonia), split by patient, and the films of each split in the same order."""
    films = load_nih(root)
    out: dict[str, Split] = {}
    chosen: dict[str, list[NihFilm]] = {}
    for split in ("train", "val", "test"):
        part = nih_split_films(films, split, limit)
        pictures = [torch.from_numpy(square_picture(_png(f.path), side))[None] for f in part]
        out[split] = Split(images=torch.stack(pictures), labels=np.asarray([f.label for f in part], np.int64))
        chosen[split] = part
    return out, chosen
