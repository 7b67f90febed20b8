"""Shared fixtures: real data locations, the canary, and the CI rule that a skip is a failure.

A test whose real component or data is missing skips with a reason on a developer's machine; under
``CI=true`` the same condition fails the test, so CI never goes green by skipping.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from secondreader.config import default_models_dir

# BentoML keeps its model store under BENTOML_HOME (default ~/bentoml): tests use their own.
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="secondreader-bentoml-"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CANARY_NAME = "CANARY^PHI"
CANARY_ID = "CANARYID123"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (under CI=true) when ``condition`` is false."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    require(SHARED_DATA.is_dir(), f"../shared/data is absent (looked in {SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = default_models_dir()
    require((path / "cxr-pneumonia" / "models" / "model.pt").is_file(),
            "trained weights models/cxr-pneumonia are missing; "
            "run: secondreader train training/configs/cxr-pneumonia.yaml --into-models")
    return path


@pytest.fixture(scope="session")
def pneumonia_predictor(models_dir: Path):  # type: ignore[no-untyped-def]
    from secondreader.model.predictor import TorchPredictor

    return TorchPredictor.from_bundle(models_dir / "cxr-pneumonia", device="cpu")


@pytest.fixture(scope="session")
def adult_pneumonia_predictor(models_dir: Path):  # type: ignore[no-untyped-def]
    """The shipped adult pneumonia model: the one a site runs on an adult film, or one without an age."""
    from secondreader.model.predictor import TorchPredictor

    require((models_dir / "cxr-pneumonia-adult" / "models" / "model.pt").is_file(),
            "trained weights models/cxr-pneumonia-adult are missing; run: secondreader train "
            "training/configs/cxr-pneumonia-adult.yaml --into-models")
    return TorchPredictor.from_bundle(models_dir / "cxr-pneumonia-adult", device="cpu")


@dataclass(frozen=True)
class Unscoped:
    """A predictor whose card has no scope, so that it runs on every instance: for tests of decoding,
    geometry and numerical agreement on real adult films (the shipped cxr-pneumonia model is scoped
    to children aged 1-5), never for what a site would route."""

    inner: Any

    @property
    def card(self) -> Any:
        return dataclasses.replace(self.inner.card, scope=None)

    def predict(self, batch: Any, *, explain: bool = True) -> Any:
        return self.inner.predict(batch, explain=explain)


@pytest.fixture(scope="session")
def unscoped_pneumonia_predictor(pneumonia_predictor: Any) -> Unscoped:
    return Unscoped(pneumonia_predictor)


def testdata_file(name: str) -> Path:
    """A file from pydicom's bundled test files or the pydicom-data package (looked up by name)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    require(found is not None, f"pydicom test file {name} not installed (pip install pydicom-data)")
    return Path(str(found))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
