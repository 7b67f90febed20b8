"""Where ``secondreader train`` writes a bundle: a new runs folder by default, ``--out DIR``, or the
models folder only with ``--into-models``; never the config's ``output_dir``, never a shipped bundle
unasked. And the comparison it prints with the shipped bundle."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from secondreader.cli import compare_bundles, main
from secondreader.config import Settings
from secondreader.training.config import TrainConfig, load_config, resolve_output

from ..conftest import ROOT

CONFIG = ROOT / "training" / "configs" / "cxr-pneumonia.yaml"
NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def _cfg() -> TrainConfig:
    return load_config(CONFIG)


def _bundle(path: Path, meta: dict[str, Any]) -> Path:
    (path / "configs").mkdir(parents=True, exist_ok=True)
    (path / "configs" / "metadata.json").write_text(json.dumps(meta))
    return path


def _classifier(version: str, sha: str, auroc: float) -> dict[str, Any]:
    return {"name": "cxr-pneumonia", "version": version,
            "secondreader": {"weights_sha256": sha, "metrics": {"test": {"auroc": auroc, "n": 10}}}}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    home, models = tmp_path / "home", tmp_path / "models"
    monkeypatch.setenv("SECONDREADER_HOME", str(home))
    monkeypatch.setenv("SECONDREADER_MODELS_DIR", str(models))
    return home, models


def test_the_default_is_a_new_runs_folder_under_home(env: tuple[Path, Path]) -> None:
    home, _ = env
    cfg = _cfg()
    assert cfg.output_dir == Path("models/cxr-pneumonia")  # the config still names one; it is not used
    path = resolve_output(cfg, now=NOW)  # settings from the environment
    assert path == (home / "runs" / f"cxr-pneumonia-{cfg.version}-20260304T050607Z").absolute()
    assert not path.exists()  # nothing is created before training
    path.mkdir(parents=True)  # a second run in the same second gets a folder of its own
    assert resolve_output(cfg, now=NOW).name == f"cxr-pneumonia-{cfg.version}-20260304T050607Z-2"
    other = Settings(home=Path("elsewhere"))
    assert resolve_output(cfg, settings=other, now=NOW).parent == (Path("elsewhere") / "runs").absolute()


def test_into_models_is_the_models_dir_setting_not_the_working_directory(env: tuple[Path, Path]) -> None:
    _, models = env
    assert resolve_output(_cfg(), into_models=True) == (models / "cxr-pneumonia").absolute()
    with pytest.raises(ValueError, match="exclusive"):
        resolve_output(_cfg(), out=Path("x"), into_models=True)


def test_out_refuses_a_folder_that_holds_a_bundle(env: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a bundle")
    assert resolve_output(_cfg(), out=empty) == empty.absolute()
    assert resolve_output(_cfg(), out=tmp_path / "new") == (tmp_path / "new").absolute()
    full = _bundle(tmp_path / "full", _classifier("1.0.0", "ab" * 32, 0.9))
    with pytest.raises(ValueError, match="already holds a bundle"):
        resolve_output(_cfg(), out=full)


def test_cli_refusals_come_before_any_training(env: tuple[Path, Path], tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    full = _bundle(tmp_path / "full", _classifier("1.0.0", "ab" * 32, 0.9))
    before = (full / "configs" / "metadata.json").read_bytes()
    assert main(["train", str(CONFIG), "--out", str(full)]) == 2
    assert "already holds a bundle" in capfd.readouterr().err
    assert (full / "configs" / "metadata.json").read_bytes() == before
    assert main(["train", str(CONFIG), "--folds-only", "--out", str(tmp_path / "x")]) == 2
    assert "--folds-only writes no bundle" in capfd.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(CONFIG), "--out", str(tmp_path / "y"), "--into-models"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capfd.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_writes_to_a_runs_folder_and_leaves_the_shipped_bundle(
        env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The wiring, with training replaced by a stub that writes a bundle where ``cfg.output_dir`` says."""
    import secondreader.training.train as train_module

    home, models = env
    shipped = _bundle(models / "cxr-pneumonia", _classifier("1.1.0", "3f3d9735" + "0" * 56, 0.9815))
    before = (shipped / "configs" / "metadata.json").read_bytes()
    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig, **kwargs: Any) -> dict[str, Any]:
        seen.append(cfg)
        meta = _classifier(cfg.version + "-new", "c0ffee00" + "1" * 56, 0.95)
        _bundle(cfg.output_dir, meta)
        return meta

    monkeypatch.setattr(train_module, "train", fake_train)
    assert main(["train", str(CONFIG)]) == 0
    out = capsys.readouterr()
    (cfg,) = seen
    assert cfg.output_dir.parent == (home / "runs").absolute()
    assert cfg.output_dir.name.startswith(f"cxr-pneumonia-{cfg.version}-")
    assert (shipped / "configs" / "metadata.json").read_bytes() == before
    assert json.loads(out.out)["bundle"] == str(cfg.output_dir)
    assert f"bundle written to {cfg.output_dir}" in out.err
    assert "c0ffee00" in out.err and "0.9500" in out.err  # the new bundle's line
    assert "3f3d9735" in out.err and "0.9815" in out.err  # and the shipped one's

    # asked for: the shipped bundle is replaced, and the table shows what it was
    assert main(["train", str(CONFIG), "--into-models"]) == 0
    err = capsys.readouterr().err
    assert seen[-1].output_dir == (models / "cxr-pneumonia").absolute()
    assert json.loads((shipped / "configs" / "metadata.json").read_text())["version"].endswith("-new")
    assert "replaced" in err and "3f3d9735" in err


def test_compare_bundles_classification_dense_and_missing_keys(tmp_path: Path) -> None:
    new = _classifier("1.2.0", "c0ffee00" + "1" * 56, 0.97)
    old = _bundle(tmp_path / "old", _classifier("1.1.0", "3f3d9735" + "0" * 56, 0.9815))
    table = compare_bundles(new, old)
    lines = table.splitlines()
    assert lines[0].split() == ["version", "weights", "test", "AUROC", "FROC@1FP"]
    assert lines[1].split() == ["new", "1.2.0", "c0ffee00", "0.9700", "-"]
    assert lines[2].split() == ["shipped", "1.1.0", "3f3d9735", "0.9815", "-"]

    dense = {"version": "1.6.0", "secondreader": {"weights_sha256": "bf029717" + "0" * 56, "metrics": {
        "test": {"study": {"auroc": 0.8814}, "froc": {"sensitivity": {"0.5": 0.595, "1.0": 0.6529}}}}}}
    assert compare_bundles(dense, None).splitlines()[1:] == [
        "new      1.6.0       bf029717    0.8814      0.6529", "shipped  (none)"]
    assert compare_bundles(dense, tmp_path / "absent").splitlines()[-1] == "shipped  (none)"
    # whatever is missing or of another shape shows as "-"
    for broken in ({}, {"version": "2"}, {"secondreader": {"metrics": {"test": "n/a"}, "weights_sha256": 5}}):
        row = compare_bundles(broken, None).splitlines()[1].split()
        assert row[0] == "new" and row.count("-") >= 3
    assert compare_bundles(tmp_path / "nothing-here", None).splitlines()[1].split() == ["new", "-", "-", "-", "-"]
    shipped = Path(str(ROOT / "models" / "cxr-nodule"))
    real = compare_bundles(dense, shipped).splitlines()[2].split()
    assert real[0] == "shipped" and real[3] != "-" and real[4] != "-"  # the shipped nodule model's figures
