"""``secondreader screen`` end to end as a user runs it: a subprocess, real weights, bad files mixed in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydicom.uid import JPEG2000Lossless

from ..conftest import CANARY_ID, CANARY_NAME
from ..contract import assert_study_result
from ..factories import CT_STORAGE, make_cxr_dataset, to_bytes, write

pytestmark = [pytest.mark.weights, pytest.mark.slow]


def _run(*args: str, env_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SECONDREADER_HOME": str(env_home)}
    return subprocess.run([sys.executable, "-m", "secondreader.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a PACS export might look, in a directory named after the (canary) patient."""
    root = tmp_path_factory.mktemp("export") / f"{CANARY_NAME.replace('^', '_')}_{CANARY_ID}"
    chest = make_cxr_dataset(600, 500, lesion_at=(250, 180))
    write(chest, root / "chest.dcm")
    write(make_cxr_dataset(600, 500, study_uid=chest.StudyInstanceUID, view_position="LL"), root / "lateral.dcm")
    write(make_cxr_dataset(300, 300, modality="CT", sop_class=CT_STORAGE), root / "ct.dcm")
    solo = make_cxr_dataset(400, 400)
    solo.PatientName = "CANARYSOLO"  # no caret: highdicom warns about it, quoting the name
    write(solo, root / "solo.dcm")
    broken = to_bytes(make_cxr_dataset(600, 500, transfer_syntax=JPEG2000Lossless))
    (root / "truncated.dcm").write_bytes(broken[: len(broken) // 2])
    (root / "notes.txt").write_text(f"patient {CANARY_NAME} {CANARY_ID}\n")
    (root / "empty.dcm").write_bytes(b"")
    with zipfile.ZipFile(root / "more.zip", "w") as archive:
        archive.writestr("../../evil/inside.dcm", to_bytes(make_cxr_dataset(400, 400)))
    return root


@pytest.fixture(scope="module")
def run_result(mixed_folder: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("out")
    home = tmp_path_factory.mktemp("home")
    proc = _run("screen", "--format", "json", "--out", str(out), str(mixed_folder), env_home=home)
    return proc, out, home


def test_exit_code_and_json_lines_only_on_stdout(run_result) -> None:  # type: ignore[no-untyped-def]
    proc, _, _ = run_result
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    results = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    for result in results:
        assert_study_result(result)
    by_status = {}
    for r in results:
        by_status.setdefault(r["status"], []).append(r)
    # chest (+ its lateral twin in the same study), CT, zip member, truncated, text, empty
    assert len(by_status["screened"]) == 3
    assert len(by_status["ineligible"]) == 1
    assert len(by_status["failed"]) == 3
    unreadable = [r for r in results if r["study_instance_uid"] is None]
    reasons = {r["source"]: r["reason"] for r in unreadable}
    assert reasons["notes.txt"] == "not a DICOM file: it is a text file"
    assert reasons["empty.dcm"] == "file is empty"
    # the header survived the truncation: the file is a failed instance of its own study
    (truncated,) = [r for r in results if r["instances"][0]["source"] == "truncated.dcm"]
    assert truncated["status"] == "failed" and truncated["study_instance_uid"] is not None
    assert truncated["reason"] == "file is truncated: it ends inside the pixel data"


def test_study_with_lateral_view_screens_the_frontal_only(run_result) -> None:  # type: ignore[no-untyped-def]
    proc, _, _ = run_result
    study = next(json.loads(line) for line in proc.stdout.splitlines()
                 if len(json.loads(line)["instances"]) == 2)
    statuses = {i["source"]: (i["status"], i["reason"]) for i in study["instances"]}
    assert statuses["chest.dcm"] == ("screened", None)
    assert statuses["lateral.dcm"] == ("ineligible", "not a frontal view: View Position LL")
    models = {f["code"]: f["model"] for f in study["findings"]}  # one finding per shipped model
    assert models["pneumonia"].startswith("cxr-pneumonia@")
    assert models.get("nodule", "cxr-nodule@").startswith("cxr-nodule@")


def test_zip_member_is_named_by_its_base_name(run_result) -> None:  # type: ignore[no-untyped-def]
    proc, _, _ = run_result
    sources = [i["source"] for line in proc.stdout.splitlines() for i in json.loads(line)["instances"]]
    assert "inside.dcm" in sources and not any(".." in s for s in sources)


def test_no_patient_data_or_paths_anywhere(run_result, mixed_folder: Path) -> None:  # type: ignore[no-untyped-def]
    proc, out, _ = run_result
    written = "".join(p.read_text() for p in out.rglob("*.json"))
    for text in (proc.stdout, proc.stderr, written):
        assert CANARY_NAME not in text and "CANARY" not in text
        assert str(mixed_folder.parent) not in text
    assert proc.stderr.strip(), "logs go to stderr"


def test_out_dir_has_overlays_and_results(run_result) -> None:  # type: ignore[no-untyped-def]
    proc, out, _ = run_result
    for line in proc.stdout.splitlines():
        result = json.loads(line)
        if result["status"] != "screened":
            assert result["artifacts"]["heatmaps"] == []
            continue
        assert result["artifacts"]["heatmaps"], "a screened study has heatmap overlays"
        for rel in result["artifacts"]["heatmaps"]:
            png = out / rel
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads((out / result["study_instance_uid"] / "result.json").read_text()) == result


def test_usage_errors_exit_non_zero(tmp_path: Path) -> None:
    assert _run("screen", env_home=tmp_path).returncode == 2
    assert _run("screen", "--format", "xml", "x", env_home=tmp_path).returncode == 2
    assert _run("bogus", env_home=tmp_path).returncode == 2
    # a device torch does not know is named, without a traceback
    proc = _run("screen", "--device", "gpu", str(tmp_path / "x.dcm"), env_home=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "device 'gpu' is not one of auto, cpu, cuda or cuda:N" in proc.stderr


def test_missing_path_is_a_failed_result_not_a_crash(tmp_path: Path) -> None:
    proc = _run("screen", "--format", "json", str(tmp_path / "nope.dcm"), env_home=tmp_path)
    assert proc.returncode == 0
    (result,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert result["status"] == "failed" and result["reason"] == "no such file or folder"
