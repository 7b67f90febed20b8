"""The replica settings (contract 5): storage URL, S3 endpoint, leases; validated at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from secondreader.config import Settings
from secondreader.service.core import Leases
from secondreader.service.storage import LocalStorage, open_storage


def test_the_defaults_keep_the_single_machine_setup(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.storage_url is None and settings.s3_endpoint_url is None
    assert (settings.lease_seconds, settings.poll_seconds) == (60.0, 1.0)
    storage = open_storage(settings.storage_url, home=settings.home)
    assert isinstance(storage, LocalStorage) and storage.root == tmp_path.absolute()


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/site-a", "/var/lib/secondreader", "file:///srv/sr"])
def test_storage_urls_accepted(url: str) -> None:
    assert Settings(storage_url=url).storage_url == url


@pytest.mark.parametrize(("url", "reason"), [("gs://bucket", "local folder or s3://"), ("s3://", "needs a bucket")])
def test_storage_urls_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Settings(storage_url=url)


def test_a_lease_shorter_than_three_polls_is_refused() -> None:
    with pytest.raises(ValidationError, match="three SECONDREADER_POLL_SECONDS"):
        Settings(lease_seconds=5, poll_seconds=2)
    with pytest.raises(ValueError, match="three poll_seconds"):
        Leases(lease_seconds=1, poll_seconds=1)
    with pytest.raises(ValueError, match="positive"):
        Leases(lease_seconds=0)


def test_the_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECONDREADER_STORAGE_URL", "s3://secondreader/site-b")
    monkeypatch.setenv("SECONDREADER_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("SECONDREADER_LEASE_SECONDS", "30")
    settings = Settings()
    assert (settings.storage_url, settings.s3_endpoint_url, settings.lease_seconds) == (
        "s3://secondreader/site-b", "http://minio:9000", 30.0)
