"""The report labeler on real radiologists' reports: the dev half of the Indiana University chest
X-ray collection (OpenI, ../shared/data/reports), against its expert MeSH coding, through the real
command. Fails below issue 29's targets (which the held-back half is judged on), on the whole dev
half and on its hash hold-out (the third of the reports no rule was written from)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import require

pytestmark = [pytest.mark.shared_data]

TARGETS = {"pneumonia": (0.98, 0.99), "nodule": (0.95, 0.99)}  # sensitivity, specificity


@pytest.fixture(scope="module")
def dev_reports(shared_data: Path) -> Path:
    path = shared_data / "reports" / "iu-openi-reports-dev.tgz"
    require(path.is_file(), f"the OpenI dev reports are absent (looked for {path})")
    return path


def _evaluate(path: Path, part: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run([sys.executable, "-m", "secondreader.cli", "evaluate-labeler", str(path), "--part", part,
                           "--format", "json"], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("part", ["all", "check"])
def test_dev_half_meets_the_targets(dev_reports: Path, part: str) -> None:
    summary = _evaluate(dev_reports, part)
    if part == "all":
        assert summary["reports"] == 1986
    for code, (sensitivity, specificity) in TARGETS.items():
        figures = summary["findings"][code]
        positives, normals = figures["sensitivity"]["total"], figures["specificity"]["total"]
        assert positives >= 20 and normals >= 200, (code, positives, normals)  # the figures mean something
        errors = [f"{e['report']} {e['kind']}: {[s['sentence'] for s in e['sentences']]}" for e in figures["errors"]]
        assert figures["sensitivity"]["value"] >= sensitivity, (code, figures["sensitivity"], errors)
        assert figures["specificity"]["value"] >= specificity, (code, figures["specificity"], errors)


def test_the_long_negated_list_is_no_longer_a_nodule(dev_reports: Path) -> None:
    """The issue's commonest error: 24 normal reports say "No pneumonia, effusions, edema,
    pneumothorax, adenopathy, nodules or masses." Every one must now read as negated."""
    summary = _evaluate(dev_reports, "all")
    confusion = summary["findings"]["nodule"]["confusion"]["normal"]
    assert confusion["negated"] >= 24
    wrong = [e for e in summary["findings"]["nodule"]["errors"]
             if any("adenopathy, nodules or masses" in s["sentence"] for s in e["sentences"])]
    assert wrong == []
