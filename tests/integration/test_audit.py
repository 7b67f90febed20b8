"""``secondreader audit`` with the local engine, end to end with the shipped model on real sample
files: the table, the Parquet file, the HTML report, bad files, no patient data in any output file,
and resuming after Ctrl-C without duplicates.

The archive: the real chest CR RG1 given a child's age, inside cxr-pneumonia's scope (the model calls
pneumonia; its report says "no focal consolidation", so it is discordant), a generated chest DX whose
report is uncertain (mentioned, so concordant), a real CT and a real extremity CR (ineligible), a
truncated chest DX (failed), and a text file (not DICOM); part of it inside a zip. Every patient
attribute of the generated files, and a report sentence, carry the canary. Then an adult study,
outside that model's scope: neither positive nor negative, never discordant.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from secondreader.audit.run import AuditConfig, AuditOutcome, run_audit
from secondreader.model.card import load_card
from secondreader.stats import wilson_interval

from .. import conftest
from ..conftest import CANARY_ID, CANARY_NAME, ROOT
from ..factories import make_cxr_dataset, to_bytes, with_patient_age, write

pytestmark = [pytest.mark.weights, pytest.mark.slow]

CANARIES = (CANARY_NAME.lower(), CANARY_ID.lower(), "canary")


def build_archive(root: Path) -> dict[str, str]:
    """Write the archive under ``root``/archive and its reports CSV; returns the study UIDs by role."""
    archive = root / "archive"
    archive.mkdir(parents=True)
    rg1 = conftest.testdata_file("RG1_UNCR.dcm")
    (archive / "RG1_UNCR.dcm").write_bytes(with_patient_age(rg1, "004Y"))  # a child: cxr-pneumonia applies
    shutil.copy(conftest.testdata_file("CT_small.dcm"), archive / "CT_small.dcm")
    uncertain = make_cxr_dataset(512, 512, lesion_at=(200, 150))
    uncertain.StudyDate = "20240315"
    truncated = make_cxr_dataset(512, 512)
    data = to_bytes(truncated)
    (archive / "nested").mkdir()
    (archive / "nested" / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (archive / "nested" / "notes.txt").write_text(f"worklist for {CANARY_NAME}\n")
    with zipfile.ZipFile(archive / "batch.zip", "w") as bundle:
        bundle.writestr("a/uncertain.dcm", to_bytes(uncertain))
        bundle.write(conftest.testdata_file("RG3_UNCR.dcm"), "b/RG3_UNCR.dcm")
    import pydicom

    rg1_uid = str(pydicom.dcmread(rg1, stop_before_pixels=True).StudyInstanceUID)
    with open(root / "reports.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["study_instance_uid", "accession_number", "patient_name", "report_text"])
        writer.writerow([rg1_uid, "", CANARY_NAME,
                         f"Chest radiograph of {CANARY_NAME}. No focal consolidation in {CANARY_NAME}. Heart normal."])
        writer.writerow([uncertain.StudyInstanceUID, "", CANARY_NAME, "Possible pneumonia in the left lower lobe."])
        writer.writerow(["", "", CANARY_NAME, "a row with neither identifier"])
    return {"rg1": rg1_uid, "uncertain": str(uncertain.StudyInstanceUID), "truncated": str(truncated.StudyInstanceUID)}


def config(root: Path, out: Path, models_dir: Path, **overrides: object) -> AuditConfig:
    values: dict[str, object] = {
        "archive": [str(root / "archive")], "reports": root / "reports.csv", "out_dir": out,
        "model_dirs": [models_dir / "cxr-pneumonia"], "device": "cpu", "workers": 2, "progress": False,
    }
    values.update(overrides)
    return AuditConfig(**values)  # type: ignore[arg-type]


def assert_no_phi(out: Path) -> None:
    """No canary in any file the audit wrote (in any case: a report sentence may spell it otherwise)."""
    checked = 0
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes().lower()
            for canary in CANARIES:
                assert canary.encode() not in data, f"{canary} in {path.relative_to(out)}"
            checked += 1
    assert checked >= 5


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> tuple[AuditOutcome, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("audit")
    uids = build_archive(root)
    out = root / "out"
    return run_audit(config(root, out, models_dir)), uids, out


def test_every_study_and_bad_file_gets_a_row(audited: tuple[AuditOutcome, dict[str, str], Path]) -> None:
    outcome, uids, out = audited
    assert outcome.complete and outcome.new == outcome.studies == 6 and outcome.skipped == 0
    table = pd.read_csv(out / "audit.csv", dtype={"study_instance_uid": str})
    assert len(table) == 6
    by_uid = table.set_index("study_instance_uid", drop=False)
    rg1 = by_uid.loc[uids["rg1"]]
    assert rg1["status"] == "screened" and rg1["report_pneumonia"] == "negated"
    assert bool(rg1["discordant"]) and rg1["discordant_findings"] == "pneumonia"
    assert rg1["ai_pneumonia_positive"] and rg1["ai_pneumonia_probability"] > 0.5
    assert rg1["study_month"] == "2004-08"
    uncertain = by_uid.loc[uids["uncertain"]]
    assert uncertain["report_pneumonia"] == "uncertain" and not bool(uncertain["discordant"])
    truncated = by_uid.loc[uids["truncated"]]
    assert truncated["status"] == "failed" and "truncated" in truncated["reason"]
    assert truncated["report"] == "missing"
    assert sorted(table["status"]) == ["failed", "failed", "ineligible", "ineligible", "screened", "screened"]
    assert table["accession_number"].isna().all()  # not asked for
    unreadable = table[table["study_instance_uid"].isna()]
    assert list(unreadable["source"]) == ["notes.txt"] and "not a DICOM file" in unreadable["reason"].iloc[0]
    assert sorted(outcome.summary.bad_files) == sorted([
        ("notes.txt", "not a DICOM file: it is a text file"),
        ("truncated.dcm", truncated["reason"]),
    ])


def test_parquet_holds_the_same_rows_with_types(audited: tuple[AuditOutcome, dict[str, str], Path]) -> None:
    _, _, out = audited
    parquet = pd.read_parquet(out / "audit.parquet")
    text = pd.read_csv(out / "audit.csv", dtype={"study_instance_uid": str})
    assert list(parquet.columns) == list(text.columns)
    assert parquet["study_instance_uid"].fillna("").tolist() == text["study_instance_uid"].fillna("").tolist()
    assert parquet["status"].tolist() == text["status"].tolist()
    assert str(parquet["priority_score"].dtype) == "int64" and str(parquet["discordant"].dtype) == "bool"
    assert parquet["ai_pneumonia_probability"].dropna().between(0, 1).all()


def test_html_report_lists_discordant_studies_with_pictures(audited: tuple[AuditOutcome, dict[str, str], Path]) -> None:
    outcome, uids, out = audited
    page = (out / "index.html").read_text()
    assert "AI result — second reader — not for primary diagnosis" in page
    assert "<td id='studies'>6</td>" in page and "<td id='screened'>2</td>" in page
    assert "<td id='ineligible'>2</td>" in page and "<td id='failed'>2</td>" in page
    lo, hi = wilson_interval(1, 2)
    assert f"50.0% (1/2; 95% CI {100 * lo:.1f}–{100 * hi:.1f}%)" in page
    assert "Discordant studies (1)" in page and uids["rg1"] in page and uids["uncertain"] not in page
    assert "report negates it" in page
    # the report sentence, with the patient's name masked
    assert "<blockquote>No focal consolidation in &lt;name&gt;</blockquote>" in page
    assert "2004-08" in page and "2024-03" in page
    row = next(r for r in outcome.rows if r["study_instance_uid"] == uids["rg1"])
    pictures = row["images"]["pneumonia"]
    for relative in (pictures["overlay"], pictures["thumbnail"]):
        assert f"src='{relative}'" in page
        assert (out / relative).is_file() and (out / relative).read_bytes()[:4] == b"\x89PNG"
    assert "notes.txt" in page and "truncated.dcm" in page


def test_no_patient_data_in_any_output(audited: tuple[AuditOutcome, dict[str, str], Path]) -> None:
    _, _, out = audited
    assert_no_phi(out)


def test_ctrl_c_loses_nothing_and_a_rerun_skips_what_was_done(tmp_path: Path, models_dir: Path) -> None:
    archive = tmp_path / "archive"
    uids = []
    for i in range(14):
        ds = make_cxr_dataset(512, 512, lesion_at=(100 + 20 * i, 200))
        write(ds, archive / f"s{i:02d}.dcm")
        uids.append(str(ds.StudyInstanceUID))
    reports = tmp_path / "reports.csv"
    reports.write_text("study_instance_uid,report_text\n" + "".join(f"{u},No consolidation.\n" for u in uids))
    out = tmp_path / "out"
    env = {**os.environ, "SECONDREADER_SECRET": "test-secret", "SECONDREADER_MODELS_DIR": str(models_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "secondreader.cli", "--log-level", "WARNING", "audit", str(archive),
         "--reports", str(reports), "--out", str(out), "--workers", "1", "--device", "cpu",
         "--model", "cxr-pneumonia"],  # the same model set as the in-process rerun below
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
        # Ctrl-C's default, whatever this test inherited: a test run started in the background of a
        # non-interactive shell has SIGINT ignored, and a Python started with it ignored keeps ignoring
        # it (the audit then ran to the end and exited 0)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = out / "checkpoint.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.is_file() and checkpoint.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-2000:]
    done_before = checkpoint.read_text().count("\n")
    assert 1 <= done_before < 14, "the interrupt should land mid-run"
    page = (out / "index.html").read_text()
    assert "Partial: the run was interrupted" in page
    assert len(pd.read_csv(out / "audit.csv")) == done_before

    rerun = AuditConfig(archive=[str(archive)], reports=reports, out_dir=out,
                        model_dirs=[models_dir / "cxr-pneumonia"], device="cpu", workers=1, progress=False)
    chunk = run_audit(replace(rerun, limit=2))  # audits can go in chunks, too
    assert chunk.skipped == done_before and chunk.new == 2 and not chunk.complete
    outcome = run_audit(rerun)
    assert outcome.skipped == done_before + 2 and outcome.new == 12 - done_before and outcome.complete
    table = pd.read_csv(out / "audit.csv", dtype={"study_instance_uid": str})
    assert sorted(table["study_instance_uid"]) == sorted(uids)  # every study once, no duplicates
    tasks = [line.split('"task":"')[1].split('"')[0] for line in checkpoint.read_text().splitlines()]
    assert len(tasks) == len(set(tasks)) == 14
    assert "Partial" not in (out / "index.html").read_text()
    assert_no_phi(out)


def test_cli_prints_a_summary_and_a_progress_bar(tmp_path: Path, models_dir: Path) -> None:
    archive = tmp_path / "archive"
    write(make_cxr_dataset(512, 512), archive / "one.dcm")
    (tmp_path / "reports.csv").write_text("accession_number,pneumonia\nX1,0\n")
    result = subprocess.run(
        [sys.executable, "-m", "secondreader.cli", "audit", str(archive), "--reports", str(tmp_path / "reports.csv"),
         "--out", str(tmp_path / "out"), "--workers", "1", "--device", "cpu", "--no-pictures"],
        capture_output=True, text=True, env={**os.environ, "SECONDREADER_MODELS_DIR": str(models_dir),
                                             "COLUMNS": "120"}, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("audit complete: 1 studies (1 new, 0 already done), 1 screened")
    assert "studies/s" in result.stderr and "ETA" in result.stderr
    # a usage error: a DICOMweb archive without a date range or accession numbers
    bad = subprocess.run(
        [sys.executable, "-m", "secondreader.cli", "audit", "http://127.0.0.1:9/dicom-web", "--reports",
         str(tmp_path / "reports.csv"), "--out", str(tmp_path / "out2")],
        capture_output=True, text=True, env={**os.environ, "SECONDREADER_MODELS_DIR": str(models_dir)}, cwd=ROOT,
        timeout=120)
    assert bad.returncode == 2 and "date range" in bad.stderr


def test_scope_and_shadow_findings_are_neither_positives_nor_negatives(tmp_path: Path, models_dir: Path) -> None:
    """Both shipped models: an adult study is outside cxr-pneumonia's scope (children aged 1-5), so
    its pneumonia finding is recorded as not applicable, neither positive nor negative, and takes no
    part in the discordance; the shadow nodule model's positive is counted apart (would have flagged),
    never as a discordance."""
    archive = tmp_path / "archive"
    adult = make_cxr_dataset(1100, 1000, lesion_at=(450, 650), spacing=(0.35, 0.35), patient_age="053Y")
    child = make_cxr_dataset(1100, 1000, lesion_at=(450, 650), spacing=(0.35, 0.35), patient_age="004Y")
    write(adult, archive / "adult.dcm")
    write(child, archive / "child.dcm")
    (tmp_path / "reports.csv").write_text("study_instance_uid,report_text\n" + "".join(
        f"{ds.StudyInstanceUID},No focal consolidation. Heart normal.\n" for ds in (adult, child)))
    outcome = run_audit(AuditConfig(archive=[str(archive)], reports=tmp_path / "reports.csv", out_dir=tmp_path / "out",
                                    model_dirs=[models_dir / "cxr-pneumonia", models_dir / "cxr-nodule"],
                                    device="cpu", workers=1, progress=False, pictures=False))
    rows = {r["study_instance_uid"]: r for r in outcome.rows}
    grown, young = rows[str(adult.StudyInstanceUID)], rows[str(child.StudyInstanceUID)]
    assert grown["findings"]["pneumonia"] == {"probability": None, "positive": False, "model": "cxr-pneumonia@1.1.0",
                                              "mode": "live", "applicable": False, "routes": False}
    assert grown["findings"]["nodule"]["mode"] == "shadow" and grown["findings"]["nodule"]["positive"]
    assert not grown["discordant"] and grown["route"] == "none"
    assert young["discordant_findings"] == ["pneumonia"] and young["findings"]["nodule"]["applicable"] is False
    pneumonia, nodule = outcome.summary.by_finding["pneumonia"], outcome.summary.by_finding["nodule"]
    assert (pneumonia["ai_positive"], pneumonia["not_applicable"]) == (1, 1)
    assert (pneumonia["discordant"].count, pneumonia["discordant"].total) == (1, 1)  # the child's study only
    assert (nodule["ai_positive"], nodule["shadow_positive"], nodule["not_applicable"]) == (0, 1, 1)
    assert (nodule["discordant"].count, nodule["discordant"].total) == (0, 0)  # a shadow model never discords
    table = pd.read_csv(tmp_path / "out" / "audit.csv", dtype={"study_instance_uid": str}).set_index(
        "study_instance_uid")
    row = table.loc[str(adult.StudyInstanceUID)]
    assert pd.isna(row["ai_pneumonia_positive"]) and pd.isna(row["ai_pneumonia_probability"])
    assert not bool(row["ai_pneumonia_applicable"]) and row["ai_nodule_mode"] == "shadow"
    page = (tmp_path / "out" / "index.html").read_text()
    nodule_ref = load_card(models_dir / "cxr-nodule").ref
    assert f"{nodule_ref} (shadow)" in page and "not applicable (outside the model" in page
    assert_no_phi(tmp_path / "out")
