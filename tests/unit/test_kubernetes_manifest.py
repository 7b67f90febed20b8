"""serving/kubernetes/secondreader.yaml is a replica setup that the service accepts: shared store,
shared bucket, shared pseudonym secret, and every setting it names is one the service knows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from secondreader.config import Settings

MANIFEST = Path(__file__).resolve().parents[2] / "serving" / "kubernetes" / "secondreader.yaml"


def _deployment() -> dict:  # type: ignore[type-arg]
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    return deployment  # type: ignore[no-any-return]


def test_replicas_share_the_store_the_bucket_and_the_secret() -> None:
    deployment = _deployment()
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name in ("SECONDREADER_DATABASE_URL", "SECONDREADER_SECRET", "SECONDREADER_API_KEYS",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name  # from the Secret, never in the manifest
    assert env["SECONDREADER_STORAGE_URL"]["value"].startswith("s3://")
    assert env["SECONDREADER_S3_ENDPOINT_URL"]["value"].startswith("http")
    assert "AWS_DEFAULT_REGION" in env


def test_every_literal_setting_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    known = {f"SECONDREADER_{name.upper()}" for name in Settings.model_fields}
    for entry in container["env"]:
        if entry["name"].startswith("SECONDREADER_"):
            assert entry["name"] in known, entry["name"]
            if "value" in entry:
                monkeypatch.setenv(entry["name"], str(entry["value"]))
    settings = Settings()
    assert settings.storage_url is not None and settings.lease_seconds >= 3 * settings.poll_seconds
