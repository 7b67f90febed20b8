"""Both shipped models together: ``secondreader screen`` and the BentoML service load every bundle
of the models folder; a study gets a finding from each, nodule regions in source pixel
coordinates, and one priority from the findings that route. Each model applies within its scope
(cxr-pneumonia: children aged 1-5; cxr-nodule: adults) and runs in its mode (cxr-nodule shadow by
default: it missed its held-out targets), which a site may change (SECONDREADER_MODEL_MODES)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from secondreader.scoring.priority import finding_score

from ..conftest import require
from ..contract import assert_study_result
from ..factories import make_cxr_dataset, write

pytestmark = [pytest.mark.weights, pytest.mark.slow]

ROWS, COLS = 1100, 1000  # not square: the model sees the centre square, regions come back in these pixels


@pytest.fixture(scope="module")
def both_models(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the shipped cxr-pneumonia (children) and cxr-nodule (adults) only: the
    adult pneumonia model, which shares cxr-pneumonia's finding code, is left out so that an adult's
    pneumonia finding is cxr-pneumonia's, not applicable (tests/integration/test_adult_screening.py
    screens with every shipped model)."""
    require((models_dir / "cxr-nodule" / "models" / "model.pt").is_file(),
            "trained weights models/cxr-nodule are missing; run: secondreader train "
            "training/configs/cxr-nodule.yaml --into-models")
    two = tmp_path_factory.mktemp("two-models-dir")
    for name in ("cxr-pneumonia", "cxr-nodule"):
        (two / name).symlink_to(models_dir / name, target_is_directory=True)
    return two


LESION = (450, 650)
ADULT, CHILD = "053Y", "003Y"
PNEUMONIA_NOT_FOR_ADULTS = f"cxr-pneumonia is validated on children aged 1-5 years; patient age {ADULT}"
NODULE_NOT_FOR_CHILDREN = f"cxr-nodule is validated on adults aged 18 years and over; patient age {CHILD}"


@pytest.fixture(scope="module")
def chests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Chest phantoms as separate studies: an adult's with a round opacity at ``LESION`` and the same
    without it (inside cxr-nodule's scope, outside cxr-pneumonia's), and a child's with the opacity
    (the other way round).

    (On real backgrounds the shipped cxr-nodule model misses many nodules: see its model card.)"""
    folder = tmp_path_factory.mktemp("two-models")
    # one study whose two images disagree on the age: the first says 3 years, the second says
    # nothing (no Patient's Age, no study date beside the birth date)
    aged = make_cxr_dataset(ROWS, COLS, lesion_at=LESION, spacing=(0.35, 0.35), patient_age=CHILD)
    unaged = make_cxr_dataset(ROWS, COLS, lesion_at=LESION, spacing=(0.35, 0.35), patient_age=None,
                              study_uid=aged.StudyInstanceUID)
    return {
        "mixed-aged": write(aged, folder / "mixed-aged.dcm"),
        "mixed-unaged": write(unaged, folder / "mixed-unaged.dcm"),
        "nodule": write(make_cxr_dataset(ROWS, COLS, lesion_at=LESION, spacing=(0.35, 0.35), patient_age=ADULT),
                        folder / "nodule.dcm"),
        "clear": write(make_cxr_dataset(ROWS, COLS, spacing=(0.35, 0.35), patient_age=ADULT), folder / "clear.dcm"),
        "child": write(make_cxr_dataset(ROWS, COLS, lesion_at=LESION, spacing=(0.35, 0.35), patient_age=CHILD),
                       folder / "child.dcm"),
    }


def _screen(paths: list[Path], models_dir: Path, home: Path, out: Path,
            modes: str | None = None) -> list[dict]:  # type: ignore[type-arg]
    env = {**os.environ, "SECONDREADER_HOME": str(home), "SECONDREADER_MODELS_DIR": str(models_dir)}
    env.pop("SECONDREADER_MODEL_MODES", None)
    if modes is not None:
        env["SECONDREADER_MODEL_MODES"] = modes
    done = subprocess.run([sys.executable, "-m", "secondreader.cli", "screen", *map(str, paths), "--format", "json",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CANARY" not in done.stdout and "CANARY" not in done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def screened(both_models: Path, chests: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:  # type: ignore[type-arg]
    """``secondreader screen`` over the three studies with the shipped bundles and their default modes
    (cxr-pneumonia live, cxr-nodule shadow: it missed its held-out targets)."""
    tmp = tmp_path_factory.mktemp("two-models-run")
    results = _screen(list(chests.values()), both_models, tmp / "home", tmp / "out")
    for study in results:
        assert_study_result(study)
        assert study["status"] == "screened"
    return {r["instances"][0]["source"].removesuffix(".dcm"): r | {"_out": str(tmp / "out")} for r in results}


def _findings(study: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {f["code"]: f for f in study["findings"]}


def test_screen_runs_both_models_and_finds_the_nodule_where_it_is(screened: dict[str, dict]) -> None:  # type: ignore[type-arg]
    positive, negative = screened["nodule"], screened["clear"]
    for study in (positive, negative):
        assert {f["code"] for f in study["findings"]} == {"nodule", "pneumonia"}
        assert {f["model"].split("@")[0] for f in study["findings"]} == {"cxr-nodule", "cxr-pneumonia"}
        assert {m["name"]: m["mode"] for m in study["models"]} == {"cxr-pneumonia": "live", "cxr-nodule": "shadow"}
    nodule = _findings(positive)["nodule"]
    assert nodule["positive"] and nodule["applicable"] and nodule["mode"] == "shadow", nodule
    clear = _findings(negative)["nodule"]
    assert not clear["positive"] and nodule["probability"] > clear["probability"]
    assert not any(r["finding"] == "nodule" for r in negative["regions"])
    regions = [r for r in positive["regions"] if r["finding"] == "nodule"]
    assert regions and all(r["id"].startswith("nodule-") for r in regions)
    row, col = LESION
    hit = [r for r in regions if r["bbox"][0] <= row < r["bbox"][2] and r["bbox"][1] <= col < r["bbox"][3]]
    assert hit, (regions, (row, col))
    assert abs(hit[0]["centroid"][0] - row) < 60 and abs(hit[0]["centroid"][1] - col) < 60
    assert hit[0]["area_mm2"] is not None and 20 < hit[0]["area_mm2"] < 5000
    # a heatmap for the finding that applies, on the source grid, and SEG/SR/SC written for the study
    sop = positive["instances"][0]["sop_instance_uid"]
    heatmaps = positive["artifacts"]["heatmaps"]
    assert any(h.endswith(f"{sop}/nodule.png") for h in heatmaps)
    assert not any(h.endswith("pneumonia.png") for h in heatmaps)  # the model did not run on an adult
    assert {Path(d).name for d in positive["artifacts"]["dicom"]} == {"sc.dcm", "seg.dcm", "sr.dcm"}


def test_an_adult_study_is_outside_the_paediatric_model(screened: dict[str, dict]) -> None:  # type: ignore[type-arg]
    """cxr-pneumonia (children aged 1-5) does not apply to a 53-year-old: not applicable with the
    reason, no probability counted into the score, no region, no route; and the shadow nodule model's
    positive finding does not route either: nothing the AI says routes this study."""
    study = screened["nodule"]
    pneumonia = _findings(study)["pneumonia"]
    assert pneumonia["applicable"] is False and pneumonia["not_applicable_reason"] == PNEUMONIA_NOT_FOR_ADULTS
    assert pneumonia["probability"] is None and pneumonia["positive"] is False and pneumonia["routes"] is False
    assert study["instances"][0]["not_applicable"] == {"pneumonia": PNEUMONIA_NOT_FOR_ADULTS}
    assert not any(r["finding"] == "pneumonia" for r in study["regions"])
    assert study["priority"] == {"score": 0, "route": "none", "rule": "no-routing-finding"}
    # the SR says so: not applicable with the reason, never "Absent"
    import highdicom as hd

    (sr_path,) = [p for p in study["artifacts"]["dicom"] if p.endswith("/sr.dcm")]
    sr = hd.sr.srread(Path(study["_out"]) / sr_path)
    evaluations, comments = _evaluations(sr)
    assert evaluations == {"Pneumonia": "Not applicable", "Nodule": "Present"}
    assert f"Pneumonia: not applicable ({PNEUMONIA_NOT_FOR_ADULTS})" in comments


def _evaluations(sr: Any) -> tuple[dict[str, str], list[str]]:
    """The SR's TID 1500 Qualitative Evaluations: finding → value, and the comments."""
    (container,) = [item for item in sr.ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    evaluations = {item.ConceptNameCodeSequence[0].CodeMeaning: item.ConceptCodeSequence[0].CodeMeaning
                   for item in container.ContentSequence if item.ValueType == "CODE"}
    comments = [str(item.TextValue) for item in container.ContentSequence if item.ValueType == "TEXT"]
    return evaluations, comments


def test_a_child_study_gets_the_paediatric_model_and_not_the_adult_one(screened: dict[str, dict]) -> None:  # type: ignore[type-arg]
    study = screened["child"]
    found = _findings(study)
    pneumonia, nodule = found["pneumonia"], found["nodule"]
    assert pneumonia["applicable"] and pneumonia["routes"] and pneumonia["probability"] is not None
    assert nodule["applicable"] is False and nodule["not_applicable_reason"] == NODULE_NOT_FOR_CHILDREN
    # the priority is the pneumonia finding's alone, anchored at its operating point
    score = finding_score(pneumonia["probability"], pneumonia["operating_point"])
    assert study["priority"]["rule"] in {"ai-urgent", "ai-positive", "ai-negative"}
    if study["priority"]["rule"] == "ai-negative":
        assert study["priority"]["score"] == min(round(score), 49)
    else:
        assert study["priority"]["score"] == max(round(score), 50) or study["priority"]["rule"] == "ai-urgent"
    assert not any(r["finding"] == "nodule" for r in study["regions"])


def test_scope_is_decided_per_image(screened: dict[str, dict]) -> None:  # type: ignore[type-arg]
    """Where a study's images differ, each model runs on the images inside its scope only: the
    paediatric model on the image that gives a child's age, the adult model on the one without an
    age (unknown: it applies); each finding applies to the study, and each image says which model
    does not apply to it, why, in its outputs too."""
    study = screened["mixed-aged"]
    assert [i["source"] for i in study["instances"]] == ["mixed-aged.dcm", "mixed-unaged.dcm"]
    aged, unaged = study["instances"]
    found = _findings(study)
    assert found["pneumonia"]["applicable"] and found["nodule"]["applicable"]
    assert aged["not_applicable"] == {"nodule": NODULE_NOT_FOR_CHILDREN}
    assert unaged["not_applicable"] == {
        "pneumonia": "cxr-pneumonia is validated on children aged 1-5 years; patient age unknown"}
    heatmaps = study["artifacts"]["heatmaps"]
    assert {h.rsplit("/", 1)[1] for h in heatmaps if aged["sop_instance_uid"] in h} == {"pneumonia.png"}
    assert {h.rsplit("/", 1)[1] for h in heatmaps if unaged["sop_instance_uid"] in h} == {"nodule.png"}
    for region in study["regions"]:
        expected = aged if region["finding"] == "pneumonia" else unaged
        assert region["sop_instance_uid"] == expected["sop_instance_uid"], region
    import highdicom as hd

    for instance, outside in ((aged, "Nodule"), (unaged, "Pneumonia")):
        (sr_path,) = [p for p in study["artifacts"]["dicom"] if p.endswith(f"{instance['sop_instance_uid']}/sr.dcm")]
        evaluations, _ = _evaluations(hd.sr.srread(Path(study["_out"]) / sr_path))
        assert evaluations[outside] == "Not applicable", evaluations


def test_a_site_sets_the_modes(both_models: Path, chests: dict[str, Path], tmp_path: Path) -> None:
    """SECONDREADER_MODEL_MODES over the cards' defaults: the nodule model live routes the adult's
    study; the pneumonia model off does not run (its finding is absent, ``models[]`` says off)."""
    (study,) = _screen([chests["nodule"]], both_models, tmp_path / "home", tmp_path / "out",
                       modes="cxr-nodule=live,cxr-pneumonia=off")
    assert_study_result(study)
    assert {m["name"]: m["mode"] for m in study["models"]} == {"cxr-pneumonia": "off", "cxr-nodule": "live"}
    (nodule,) = study["findings"]
    assert nodule["code"] == "nodule" and nodule["mode"] == "live" and nodule["routes"] and nodule["positive"]
    assert study["priority"]["route"] in ("review", "urgent")
    assert study["priority"]["rule"] in ("ai-positive", "ai-urgent")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, both_models: Path) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SECONDREADER_HOME", str(tmp_path_factory.mktemp("bento-two-models")))
    mp.setenv("SECONDREADER_API_KEYS", "k1")
    mp.setenv("SECONDREADER_MODELS_DIR", str(both_models))
    mp.setenv("SECONDREADER_DICOM_PORT", "0")
    mp.setenv("SECONDREADER_HL7_PORT", "0")
    mp.delenv("SECONDREADER_SCREEN_SAMPLES", raising=False)
    mp.delenv("SECONDREADER_MODEL_MODES", raising=False)
    from secondreader.service.bento import SecondReader

    with TestClient(SecondReader.to_asgi(), base_url="http://127.0.0.1") as c:
        yield c
    mp.undo()


def test_the_service_loads_both_models(client: TestClient, chests: dict[str, Path]) -> None:
    response = client.post("/v1/screen?wait=120", content=chests["nodule"].read_bytes(),
                           headers={"Authorization": "Bearer k1", "Content-Type": "application/dicom"})
    assert response.status_code == 200, response.text
    (study,) = response.json()["studies"]
    assert {f["code"] for f in study["findings"]} == {"nodule", "pneumonia"}
    assert any(r["finding"] == "nodule" for r in study["regions"])
    metrics = client.get("/metrics").text
    assert 'model="cxr-nodule"' in metrics and 'model="cxr-pneumonia"' in metrics


def _counter(metrics: str, name: str = "secondreader_findings_total", **labels: str) -> float:
    """The value of the series ``name`` with these labels (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_and_the_worklist_give_each_models_flag_rate_by_mode(client: TestClient,
                                                                     chests: dict[str, Path]) -> None:
    """What a shadow model would send to review, before it goes live: per-model, per-mode counters
    in /metrics, and flag rates under the /v1 worklist routes."""
    headers = {"Authorization": "Bearer k1"}
    before = client.get("/metrics").text
    for name in ("nodule", "child"):
        response = client.post("/v1/screen?wait=120", content=chests[name].read_bytes(),
                               headers={**headers, "Content-Type": "application/dicom"})
        assert response.status_code == 200, response.text
    after = client.get("/metrics").text
    assert _counter(after, "secondreader_model_mode", model="cxr-nodule", mode="shadow") == 1
    assert _counter(after, "secondreader_model_mode", model="cxr-pneumonia", mode="live") == 1
    nodule_labels = {"model": "cxr-nodule", "finding": "nodule", "mode": "shadow"}
    pneumonia_labels = {"model": "cxr-pneumonia", "finding": "pneumonia", "mode": "live"}
    for labels in [{**nodule_labels, "outcome": "positive"}, {**nodule_labels, "outcome": "not_applicable"},
                   {**pneumonia_labels, "outcome": "not_applicable"}]:
        assert _counter(after, **labels) - _counter(before, **labels) == 1, labels
    assert "CANARY" not in after and "053Y" not in after

    rates = client.get("/v1/worklist/rates", headers=headers)
    assert rates.status_code == 200, rates.text
    by_model = {(r["model"], r["mode"]): r for r in rates.json()["models"]}
    nodule = by_model[("cxr-nodule", "shadow")]
    assert nodule["finding"] == "nodule" and nodule["routes"] is False
    assert nodule["flagged"] >= 1 and nodule["screened"] >= nodule["flagged"] and nodule["not_applicable"] >= 1
    assert 0 < nodule["flag_rate"] <= 1 and nodule["flag_rate_ci95"][0] <= nodule["flag_rate"]
    pneumonia = by_model[("cxr-pneumonia", "live")]
    assert pneumonia["routes"] is True and pneumonia["screened"] >= 1 and pneumonia["not_applicable"] >= 1
    assert rates.json()["studies"] >= 2
    assert client.get("/v1/worklist/rates?days=7", headers=headers).json()["studies"] >= 2
    assert client.get("/v1/worklist/rates?days=-1", headers=headers).status_code == 400
    assert client.get("/v1/worklist/rates").status_code == 401
