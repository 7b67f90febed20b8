"""What ``--resume`` may reuse: the run digest of a training configuration; the changelog a config
must keep; and the upload limit's conversion (plain settings arithmetic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from secondreader.config import Settings
from secondreader.training.common import bundle_header
from secondreader.training.config import TrainConfig, load_config, run_digest
from secondreader.training.modelcard import versions_section

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "cxr-nodule-simulated.yaml"


def _changed(cfg: TrainConfig, section: str, **values: object) -> TrainConfig:
    part = getattr(cfg, section)
    return cfg.model_copy(update={section: part.model_copy(update=values)})


def test_a_new_version_or_label_keeps_the_digest_and_anything_the_fits_read_changes_it() -> None:
    cfg = load_config(CONFIG)
    base = run_digest(cfg, "backgrounds")
    for same in (cfg.model_copy(update={"version": "9.9.9", "description": "another text",
                                        "changelog": {"9.9.9": "what changed", **cfg.changelog}}),
                 cfg.model_copy(update={"output_dir": Path("elsewhere"), "checkpoint_dir": Path("runs/x")}),
                 cfg.model_copy(update={"provenance": {"reproduce": "something else"}}),
                 # the device as written: the kind it resolves to is passed in beside the data
                 _changed(cfg, "schedule", device="cpu"), _changed(cfg, "schedule", mixed_precision=False)):
        assert run_digest(same, "backgrounds") == base
    assert cfg.lesions is not None
    for other in (cfg.model_copy(update={"seed": cfg.seed + 1}),
                  _changed(cfg, "schedule", epochs=cfg.schedule.epochs + 1),
                  _changed(cfg, "schedule", channels_last=True),
                  _changed(cfg, "lesions", vessel_mimic_fraction=0.3),
                  _changed(cfg, "saliency", flip_average=not cfg.saliency.flip_average),
                  _changed(cfg, "network", args={**cfg.network.args, "num_res_units": 3})):
        assert run_digest(other, "backgrounds") != base
    # the data read is part of it: another background picture refits
    assert run_digest(cfg, "other backgrounds") != base


def test_a_config_with_a_changelog_must_say_what_its_version_changes() -> None:
    raw = load_config(CONFIG).model_dump(mode="json", by_alias=True)
    assert raw["version"] in raw["changelog"]
    with pytest.raises(ValidationError, match="changelog has no entry for version 9.9.9"):
        TrainConfig.model_validate({**raw, "version": "9.9.9"})
    bumped = TrainConfig.model_validate({**raw, "version": "9.9.9",
                                         "changelog": {"9.9.9": "more epochs", **raw["changelog"]}})
    header = bundle_header(bumped, "localisation")
    assert list(header["changelog"])[:2] == ["9.9.9", raw["version"]]
    assert "- **9.9.9**: more epochs\n" in versions_section(header)
    # without a changelog the bundle still has one: its version and description
    bare = TrainConfig.model_validate({**raw, "changelog": {}})
    assert bundle_header(bare, "localisation")["changelog"] == {bare.version: bare.description}


def test_the_upload_limit_is_whole_mebibytes_and_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECONDREADER_MAX_UPLOAD_MB", "3")
    assert Settings().max_upload_bytes() == 3 * 1024 * 1024
    monkeypatch.setenv("SECONDREADER_MAX_UPLOAD_MB", "0")
    with pytest.raises(ValidationError, match="max_upload_mb"):
        Settings()
