"""Both shipped models together: ``secondreader screen`` and the BentoML service load every bundle
of the models folder; a study gets a finding from each, nodule regions in source pixel
coordinates, and one priority that combines them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from secondreader.scoring.priority import finding_score

from ..conftest import require
from ..contract import assert_study_result
from ..factories import make_cxr_dataset, write

pytestmark = [pytest.mark.weights, pytest.mark.slow]

ROWS, COLS = 1100, 1000  # not square: the model sees the centre square, regions come back in these pixels


@pytest.fixture(scope="module")
def both_models(models_dir: Path) -> Path:
    require((models_dir / "cxr-nodule" / "models" / "model.pt").is_file(),
            "trained weights models/cxr-nodule are missing; run: secondreader train training/configs/cxr-nodule.yaml")
    return models_dir


LESION = (450, 650)


@pytest.fixture(scope="module")
def chests(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, tuple[float, float]]:
    """A chest phantom with a round opacity at ``LESION`` and the same phantom without it, as two
    studies; returns their files and the opacity's centre (row, col) in source pixels.

    (On real backgrounds the shipped cxr-nodule model misses many nodules: see its model card.)"""
    folder = tmp_path_factory.mktemp("two-models")
    a = write(make_cxr_dataset(ROWS, COLS, lesion_at=LESION, spacing=(0.35, 0.35)), folder / "nodule.dcm")
    b = write(make_cxr_dataset(ROWS, COLS, spacing=(0.35, 0.35)), folder / "clear.dcm")
    return a, b, (float(LESION[0]), float(LESION[1]))


def _screen(paths: list[Path], models_dir: Path, home: Path, out: Path) -> list[dict]:  # type: ignore[type-arg]
    env = {**os.environ, "SECONDREADER_HOME": str(home), "SECONDREADER_MODELS_DIR": str(models_dir)}
    done = subprocess.run([sys.executable, "-m", "secondreader.cli", "screen", *map(str, paths), "--format", "json",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_screen_runs_both_models_and_finds_the_nodule_where_it_is(both_models: Path, chests, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with_nodule, clear, (row, col) = chests
    results = {r["instances"][0]["source"]: r for r in _screen([with_nodule, clear], both_models, tmp_path / "home",
                                                              tmp_path / "out")}
    positive, negative = results["nodule.dcm"], results["clear.dcm"]
    for study in (positive, negative):
        assert_study_result(study)
        assert study["status"] == "screened"
        assert {f["code"] for f in study["findings"]} == {"nodule", "pneumonia"}
        assert {f["model"].split("@")[0] for f in study["findings"]} == {"cxr-nodule", "cxr-pneumonia"}
        # one priority over both findings, each anchored at its own operating point
        top = max(finding_score(f["probability"], f["operating_point"]) for f in study["findings"])
        assert study["priority"]["rule"] in {"ai-urgent", "ai-positive", "ai-negative"}
        if study["priority"]["rule"] == "ai-negative":
            assert study["priority"]["score"] == min(round(top), 49)
        else:
            assert study["priority"]["score"] == max(round(top), 50) or study["priority"]["rule"] == "ai-urgent"
    nodule = {f["code"]: f for f in positive["findings"]}["nodule"]
    assert nodule["positive"], nodule
    clear = {f["code"]: f for f in negative["findings"]}["nodule"]
    assert not clear["positive"] and nodule["probability"] > clear["probability"]
    assert not any(r["finding"] == "nodule" for r in negative["regions"])
    regions = [r for r in positive["regions"] if r["finding"] == "nodule"]
    assert regions and all(r["id"].startswith("nodule-") for r in regions)
    hit = [r for r in regions if r["bbox"][0] <= row < r["bbox"][2] and r["bbox"][1] <= col < r["bbox"][3]]
    assert hit, (regions, (row, col))
    assert abs(hit[0]["centroid"][0] - row) < 60 and abs(hit[0]["centroid"][1] - col) < 60
    assert hit[0]["area_mm2"] is not None and 20 < hit[0]["area_mm2"] < 5000
    # a heatmap per finding on the source grid, and SEG/SR/SC written for the study
    sop = positive["instances"][0]["sop_instance_uid"]
    heatmaps = positive["artifacts"]["heatmaps"]
    assert any(h.endswith(f"{sop}/nodule.png") for h in heatmaps)
    assert any(h.endswith(f"{sop}/pneumonia.png") for h in heatmaps)
    assert {Path(d).name for d in positive["artifacts"]["dicom"]} == {"sc.dcm", "seg.dcm", "sr.dcm"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, both_models: Path) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SECONDREADER_HOME", str(tmp_path_factory.mktemp("bento-two-models")))
    mp.setenv("SECONDREADER_API_KEYS", "k1")
    mp.setenv("SECONDREADER_MODELS_DIR", str(both_models))
    mp.setenv("SECONDREADER_DICOM_PORT", "0")
    mp.setenv("SECONDREADER_HL7_PORT", "0")
    mp.delenv("SECONDREADER_SCREEN_SAMPLES", raising=False)
    from secondreader.service.bento import SecondReader

    with TestClient(SecondReader.to_asgi(), base_url="http://127.0.0.1") as c:
        yield c
    mp.undo()


def test_the_service_loads_both_models(client: TestClient, chests) -> None:  # type: ignore[no-untyped-def]
    with_nodule, _, _ = chests
    response = client.post("/v1/screen?wait=120", content=with_nodule.read_bytes(),
                           headers={"Authorization": "Bearer k1", "Content-Type": "application/dicom"})
    assert response.status_code == 200, response.text
    (study,) = response.json()["studies"]
    assert {f["code"] for f in study["findings"]} == {"nodule", "pneumonia"}
    assert any(r["finding"] == "nodule" for r in study["regions"])
    metrics = client.get("/metrics").text
    assert 'model="cxr-nodule"' in metrics and 'model="cxr-pneumonia"' in metrics
