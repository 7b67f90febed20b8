"""The go-live report: how many adult studies the shipped models would send to review.

    python benchmarks/review_rates.py [--json FILE]

Builds DX DICOM studies from the real adult films of ``../shared/data`` (JSRT: with the nodule
patients' real ages; NIH: with each film's age and view) and screens them in-process with every
bundle in ``models/`` in its shipped mode (``SECONDREADER_MODEL_MODES`` honoured) and scope, as
``secondreader screen`` would. For each set it reports the share of studies **routed** to review
(live findings only) and, per model, the share each model **flags** (positive, live or shadow: what
a shadow model would send to review if it went live), with Wilson 95% intervals.

Which films a model never saw matters: cxr-nodule trained on every JSRT fold but its validation
fold (its cross-validated figures are in its card) and on NIH no-finding films of training
patients; cxr-pneumonia-adult trained on NIH training patients only. The sets below are chosen so
that each is unseen by the models it is read for:

- ``jsrt-validation-fold``: JSRT films of cxr-nodule's validation fold (never trained on, but that
  fold chose cxr-nodule's operating point: its rates there are not unbiased);
- ``jsrt-all``: all 163 JSRT films (unseen by the pneumonia models; cxr-nodule trained on most);
- ``nih-test``: the NIH films of the test patients (unseen by every model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from common import write_json
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from secondreader.config import Settings, default_models_dir
from secondreader.dicom.io import iter_inputs
from secondreader.model.card import find_bundles, load_card
from secondreader.model.dense import load_predictor
from secondreader.model.modes import site_modes
from secondreader.pipeline import ScreeningOptions, screen_inputs
from secondreader.stats import Rate
from secondreader.training.realdata import load_nih, nih_split

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def _dicom(path: Path, picture: np.ndarray, *, age: int | None, view: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "REVIEW^RATES", "RR"
    if age is not None:
        ds.PatientAge = f"{age:03d}Y"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", view
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = picture.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.round(picture * 4095).astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def sets(folder: Path) -> Iterator[tuple[str, str, Path]]:
    """(set, kind, file) for every film written as DICOM under ``folder``."""
    meta = json.loads((default_models_dir() / "cxr-nodule" / "configs" / "metadata.json").read_text())
    films = meta["secondreader"]["metrics"]["validation"].get("films", [])
    validation = {f["id"] for f in films}
    with (DATA / "jsrt" / "nodules.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            stem = Path(row["image"]).stem
            path = folder / f"jsrt-{stem}.dcm"
            _dicom(path, _png(DATA / "jsrt" / "images" / row["image"]),
                   age=int(float(row["age"])) if row["age"] else None, view="PA")
            kind = "nodule" if row["has_nodule"] == "1" else "normal"
            yield "jsrt-all", kind, path
            if stem in validation:
                yield "jsrt-validation-fold", kind, path
    for f in load_nih(DATA / "nih-pneumonia"):
        if nih_split(f.patient_id) != "test":
            continue
        path = folder / f"nih-{Path(f.id).stem}.dcm"
        _dicom(path, _png(f.path), age=f.age, view=f.view)
        yield "nih-test", "pneumonia" if f.label else "normal", path


def _rate(flags: list[bool]) -> dict[str, Any]:
    rate = Rate(sum(flags), len(flags))
    return {"n": len(flags), "count": rate.count, "rate": round(rate.value or 0.0, 4),
            "ci95": [round(v, 4) for v in rate.interval]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"{DATA} is absent: this report needs ../shared/data", file=sys.stderr)
        return 2
    settings = Settings()
    predictors = [load_predictor(b, device="cpu") for b in find_bundles(settings.models_dir)]
    options = ScreeningOptions(predictors=predictors, explain=False,
                               modes=site_modes([p.card for p in predictors], settings.resolved_model_modes()))
    with tempfile.TemporaryDirectory() as tmp:
        members = list(sets(Path(tmp)))
        by_file = {}
        for result in screen_inputs(iter_inputs(sorted({p for _, _, p in members})), options):
            (instance,) = result.instances
            by_file[instance.source] = result
        rows: dict[str, dict[str, Any]] = {}
        for name, kind, path in members:
            result = by_file[path.name]
            row = rows.setdefault(f"{name} {kind}", {"routed": [], "flags": {}})
            row["routed"].append(result.priority.route.value != "none")
            for f in result.findings:
                if f.applicable:
                    row["flags"].setdefault(f"{f.model} ({f.mode})", []).append(bool(f.positive))
    report = {"models": {load_card(b).ref: options.mode_of(load_card(b)).value
                         for b in find_bundles(settings.models_dir)},
              "sets": {k: {"routed": _rate(v["routed"]), "flagged_by": {m: _rate(f) for m, f in v["flags"].items()}}
                       for k, v in sorted(rows.items())}}
    print(f"models: {report['models']}")
    print(f"{'set':34} {'studies':>7}  {'routed [95% CI]':24} flagged by each model (would route if live)")
    for name, row in report["sets"].items():
        r = row["routed"]
        flags = "; ".join(f"{m} {v['rate']:.1%}" for m, v in row["flagged_by"].items())
        print(f"{name:34} {r['n']:>7}  {r['rate']:>6.1%} [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}]   {flags}")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SECONDREADER_HOME", tempfile.mkdtemp(prefix="review-rates-"))
    sys.exit(main())
