"""``secondreader audit --engine ray`` on a local Ray, inside the tests' private network namespace
(Ray listens on every interface and probes the cloud metadata address; it never runs on the host
network). Ray starts once for the module. The rows must agree with the pipeline run in this process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from secondreader.audit.run import AuditOutcome, run_audit
from secondreader.pipeline import ScreeningOptions, screen_paths

from ..conftest import require
from ..orthanc import in_private_network_namespace
from .test_audit import assert_no_phi, build_archive, config

pytestmark = [pytest.mark.weights, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_audit(tmp_path_factory: pytest.TempPathFactory,
              models_dir: Path) -> Iterator[tuple[AuditOutcome, dict[str, str], Path, Path, Path]]:
    require(shutil.which("ray") is not None or _ray_importable(), "ray[data] is not installed (pip install '.[ray]')")
    require(in_private_network_namespace(),
            "Ray listens on all interfaces: run the suite inside `unshare -n` (see .ci/run)")
    root = tmp_path_factory.mktemp("audit-ray")
    uids = build_archive(root)
    ray_temp = Path(tmp_path_factory.mktemp("rt"))  # short: Ray's socket paths have a length limit
    out = root / "out"
    outcome = run_audit(config(root, out, models_dir, engine="ray", workers=2, ray_temp_dir=ray_temp))
    yield outcome, uids, out, root, ray_temp


def _ray_importable() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def test_ray_rows_agree_with_the_pipeline(ray_audit, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    outcome, uids, out, root, _ = ray_audit
    assert outcome.complete and outcome.new == 6
    assert outcome.engine_stats.extra["actors"] >= 1 and outcome.engine_stats.extra["gpus"] == 0
    rows = {r["study_instance_uid"]: r for r in outcome.rows}
    expected = {r.study_instance_uid: r for r in screen_paths([root / "archive"],
                                                              ScreeningOptions([pneumonia_predictor], explain=False))}
    assert set(rows) == set(expected)
    for uid, result in expected.items():
        assert rows[uid]["status"] == result.status.value
        assert rows[uid]["priority_score"] == result.priority.score
        for finding in result.findings:
            assert rows[uid]["findings"][finding.code]["probability"] == pytest.approx(finding.probability, abs=1e-4)
    assert rows[uids["rg1"]]["discordant_findings"] == ["pneumonia"]
    assert rows[uids["uncertain"]]["labels"] == {"pneumonia": "uncertain"}


def test_ray_ships_the_pictures_back_and_writes_no_phi(ray_audit) -> None:  # type: ignore[no-untyped-def]
    outcome, uids, out, _, _ = ray_audit
    row = next(r for r in outcome.rows if r["study_instance_uid"] == uids["rg1"])
    for relative in row["images"]["pneumonia"].values():
        assert (out / relative).read_bytes()[:4] == b"\x89PNG"
    assert uids["rg1"] in (out / "index.html").read_text()
    assert_no_phi(out)


def test_ray_kept_to_the_temporary_folder_it_was_given(ray_audit) -> None:  # type: ignore[no-untyped-def]
    *_, ray_temp = ray_audit
    assert any(p.name.startswith("session_") for p in ray_temp.iterdir())
