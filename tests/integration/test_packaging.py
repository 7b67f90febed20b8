"""The bento's package list must not drift from pyproject.toml's dependencies."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_bentofile_packages_match_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bento["python"]["lock_packages"] is False
    assert sorted(bento["python"]["packages"]) == sorted(deps)
    assert bento["service"] == "serving.service:SecondReader"


def test_bentoml_build_packages_the_service_and_models(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "BENTOML_HOME": str(tmp_path)}
    imported = subprocess.run([sys.executable, "-m", "secondreader.service.modelstore", str(ROOT / "models")],
                              env=env, capture_output=True, text=True, timeout=120, check=True)
    shipped = sorted(f"{m['name']}:{m['version']}" for m in (
        json.loads(path.read_text()) for path in (ROOT / "models").glob("*/configs/metadata.json")))
    assert "cxr-pneumonia:1.1.0" in shipped and sorted(imported.stdout.split()) == shipped
    proc = subprocess.run([sys.executable, "-m", "bentoml", "build", str(ROOT)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "bentos" / "secondreader").iterdir() if p.is_dir()]
    assert (bento / "src" / "models" / "cxr-pneumonia" / "models" / "model.pt").is_file()
    # the class-level BentoModel reference makes the bento carry the model-store bundle
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert sorted(m["tag"] for m in manifest["services"][0]["models"]) == shipped
    assert (bento / "src" / "serving" / "service.py").is_file()
    # the viewer's built page and the default routing rules travel inside the package
    assert (bento / "src" / "src" / "secondreader" / "viewer" / "static" / "index.html").is_file()
    assert (bento / "src" / "src" / "secondreader" / "worklist" / "routing.yaml").is_file()
    assert not list(bento.rglob(".pytest_cache"))
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch>=" in requirements and "==2.13.0" not in requirements


def test_the_service_names_the_bundles_of_secondreader_models_dir(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Contract 5: an installed service reads its bundles from SECONDREADER_MODELS_DIR, the class-level
    model references included (they are resolved when the service module is imported)."""
    import shutil

    from secondreader.service.modelstore import shipped_tag

    monkeypatch.delenv("SECONDREADER_MODELS_DIR", raising=False)
    assert shipped_tag("cxr-pneumonia") == "cxr-pneumonia:1.1.0"
    elsewhere = tmp_path / "models" / "cxr-pneumonia" / "configs"
    elsewhere.mkdir(parents=True)
    meta = json.loads((ROOT / "models" / "cxr-pneumonia" / "configs" / "metadata.json").read_text())
    (elsewhere / "metadata.json").write_text(json.dumps({**meta, "version": "7.0.0"}))
    shutil.copytree(ROOT / "models" / "cxr-pneumonia" / "models", elsewhere.parent / "models")
    monkeypatch.setenv("SECONDREADER_MODELS_DIR", str(tmp_path / "models"))
    assert shipped_tag("cxr-pneumonia") == "cxr-pneumonia:7.0.0"
