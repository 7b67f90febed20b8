"""Real adult films through the real CLI, as a site would screen them: DX DICOM studies built in the
test from JSRT films (real nodules) and NIH no-finding films, screened by `secondreader screen` with
the shipped models and their shipped modes.

- An adult's pneumonia finding comes from the adult model; with that model off, the paediatric
  model is outside its scope: not applicable, no score, no route.
- The nodule model finds the obvious real nodules (subtlety 4-5) its bundle records finding on its
  validation fold (films it never trained on), in the same place.
- Normal adult films that no shipped model trained on (JSRT's validation fold, NIH test patients'
  no-finding films): at most 10% routed to review with the shipped defaults (issue 26, "no flood").
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from secondreader.config import default_models_dir
from secondreader.training.realdata import load_nih, nih_split

from ..conftest import require
from ..factories import make_cxr_dataset, write

pytestmark = [pytest.mark.shared_data, pytest.mark.weights, pytest.mark.slow]


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def _nodule_record() -> list[dict]:  # type: ignore[type-arg]
    meta = default_models_dir() / "cxr-nodule" / "configs" / "metadata.json"
    require(meta.is_file(), "the shipped cxr-nodule bundle is missing")
    films = json.loads(meta.read_text())["secondreader"]["metrics"]["validation"].get("films")
    require(films is not None, "the shipped cxr-nodule bundle records no validation films (a 1.x bundle)")
    return films  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def studies(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:  # type: ignore[type-arg]
    record = _nodule_record()
    with (shared_data / "jsrt" / "nodules.csv").open(newline="") as fh:
        table = {Path(r["image"]).stem: r for r in csv.DictReader(fh)}
    found = [f for f in record if f["nodule"] and f["found"] and f["subtlety"] >= 4]
    normal = [f for f in record if not f["nodule"]]
    nih = [f for f in load_nih(shared_data / "nih-pneumonia")
           if f.label == 0 and nih_split(f.patient_id) == "test" and f.age >= 18]
    require(len(found) >= 1, "the shipped cxr-nodule finds no subtlety 4-5 nodule of its validation fold")
    folder = tmp_path_factory.mktemp("adults")
    expected: dict[str, dict] = {}  # type: ignore[type-arg]
    for kind, films in (("nodule", found), ("normal", normal)):
        for f in films:
            age = table[f["id"]]["age"]
            ds = make_cxr_dataset(1024, 1024, pixels=_png(shared_data / "jsrt" / "images" / f"{f['id']}.png"),
                                  bits_stored=12, patient_age=f"{int(float(age)):03d}Y" if age else "060Y")
            path = write(ds, folder / f"{f['id']}.dcm")
            expected[ds.StudyInstanceUID] = {"kind": kind, "id": f["id"], "row": table[f["id"]], "path": path}
    for f in nih:
        ds = make_cxr_dataset(384, 384, pixels=_png(f.path), bits_stored=12, view_position=f.view,
                              patient_age=f"{f.age:03d}Y")
        path = write(ds, folder / f"{Path(f.id).stem}.dcm")
        expected[ds.StudyInstanceUID] = {"kind": "normal", "id": f.id, "row": None, "path": path}
    results = _screen(folder, tmp_path_factory.mktemp("home"))
    assert {r["study_instance_uid"] for r in results} == set(expected)
    return {r["study_instance_uid"]: {**expected[r["study_instance_uid"]], "result": r} for r in results}


def _screen(path: Path, home: Path, modes: str | None = None) -> list[dict]:  # type: ignore[type-arg]
    env = {**os.environ, "SECONDREADER_HOME": str(home)}
    env.pop("SECONDREADER_MODEL_MODES", None)
    if modes:
        env["SECONDREADER_MODEL_MODES"] = modes
    proc = subprocess.run([sys.executable, "-m", "secondreader.cli", "screen", "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=900, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CANARY" not in proc.stdout and "CANARY" not in proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _finding(result: dict, code: str) -> dict:  # type: ignore[type-arg]
    (found,) = [f for f in result["findings"] if f["code"] == code]
    return found  # type: ignore[no-any-return]


def test_an_adults_pneumonia_finding_is_the_adult_models(studies: dict[str, dict]) -> None:  # type: ignore[type-arg]
    for study in studies.values():
        f = _finding(study["result"], "pneumonia")
        assert f["model"].startswith("cxr-pneumonia-adult@") and f["applicable"] and f["probability"] is not None
        assert study["result"]["instances"][0].get("not_applicable", {}) == {}


def test_with_the_adult_model_off_the_paediatric_one_neither_scores_nor_routes_adults(
        studies: dict[str, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    one = next(s for s in studies.values() if s["kind"] == "nodule")
    src = tmp_path / "one"
    src.mkdir()
    (src / "study.dcm").symlink_to(one["path"])
    (result,) = _screen(src, tmp_path / "home", modes="cxr-pneumonia-adult=off")
    f = _finding(result, "pneumonia")
    assert f["model"].startswith("cxr-pneumonia@") and f["applicable"] is False and f["probability"] is None
    assert not f["positive"] and not f["routes"]
    assert f["not_applicable_reason"].startswith("cxr-pneumonia is validated on children aged 1-5 years; patient age ")
    assert not any(r["finding"] == "pneumonia" for r in result["regions"])


def test_the_nodule_model_finds_the_obvious_real_nodules_its_card_says_it_finds(studies: dict[str, dict]) -> None:  # type: ignore[type-arg]
    for study in (s for s in studies.values() if s["kind"] == "nodule"):
        result = study["result"]
        f = _finding(result, "nodule")
        assert f["applicable"] and f["positive"], f"{study['id']}: flagged on its validation fold, not when served"
        row, col = float(study["row"]["y_px"]), float(study["row"]["x_px"])
        # the region's box on the source grid (1024 px, JSRT's own) holds the real nodule's centre
        boxes = [r["bbox"] for r in result["regions"] if r["finding"] == "nodule"]
        assert any(b[0] <= row < b[2] and b[1] <= col < b[3] for b in boxes), (study["id"], boxes, row, col)


def test_at_most_a_tenth_of_normal_adult_films_are_routed(studies: dict[str, dict]) -> None:  # type: ignore[type-arg]
    normals = [s for s in studies.values() if s["kind"] == "normal"]
    assert len(normals) >= 40
    routed = [s["id"] for s in normals if s["result"]["priority"]["route"] != "none"]
    assert len(routed) <= 0.1 * len(normals), routed
    for study in normals:
        assert _finding(study["result"], "nodule")["applicable"]
