"""Per-model mode at a site: the card's default (``secondreader.mode``, or the older routing gate),
the site's ``SECONDREADER_MODEL_MODES`` over it, and what live, shadow and not-applicable findings
do to the priority."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from secondreader.config import Settings
from secondreader.errors import ModelError
from secondreader.model.card import load_card, parse_mode
from secondreader.model.modes import ModelMode, parse_model_modes, site_modes
from secondreader.scoring.priority import FindingResult, Priority, Route, prioritise

ROOT = Path(__file__).resolve().parents[2]


def _bundle(tmp_path: Path, name: str, secondreader: dict[str, Any]) -> Path:
    meta = json.loads((ROOT / "models" / "cxr-pneumonia" / "configs" / "metadata.json").read_text())
    meta["name"] = name
    meta["secondreader"] = {k: v for k, v in meta["secondreader"].items() if k not in ("mode", "routing")}
    meta["secondreader"].update(secondreader)
    (tmp_path / name / "configs").mkdir(parents=True)
    (tmp_path / name / "configs" / "metadata.json").write_text(json.dumps(meta))
    return tmp_path / name


def test_the_default_mode_comes_from_the_card() -> None:
    shadow = {"mode": {"default": "shadow", "reason": "targets missed"}}
    assert parse_mode(shadow) == (ModelMode.SHADOW, "targets missed")
    assert parse_mode({"mode": {"default": "live"}}) == (ModelMode.LIVE, None)
    # bundles older than `mode`: the routing gate says shadow, no gate says live
    assert parse_mode({"routing": {"enabled": False, "reason": "AUROC 0.6"}}) == (ModelMode.SHADOW, "AUROC 0.6")
    assert parse_mode({"routing": {"enabled": True}}) == (ModelMode.LIVE, None)
    assert parse_mode({}) == (ModelMode.LIVE, None)
    # mode is the source of truth when both are there
    assert parse_mode({"mode": {"default": "live"}, "routing": {"enabled": False}})[0] is ModelMode.LIVE


@pytest.mark.parametrize(("mode", "message"), [
    ({"default": "off"}, "mode.default must be live or shadow, not 'off'"),
    ({"default": "LIVE"}, "mode.default must be live or shadow"),
    ("live", "mode must be an object"),
    ({"default": "live", "reason": 3}, "mode.reason must be text"),
])
def test_a_bad_default_mode_is_refused(mode: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mode({"mode": mode})


def test_shipped_bundles_default_modes() -> None:
    nodule = load_card(ROOT / "models" / "cxr-nodule")
    pneumonia = load_card(ROOT / "models" / "cxr-pneumonia")
    assert nodule.default_mode is ModelMode.SHADOW and "targets not met" in (nodule.mode_reason or "")
    assert pneumonia.default_mode is ModelMode.LIVE
    assert not nodule.routes and pneumonia.routes


def test_a_bundle_with_a_bad_mode_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="mode.default must be live or shadow"):
        load_card(_bundle(tmp_path, "m", {"mode": {"default": "sometimes"}}))


@pytest.mark.parametrize(("value", "expected"), [
    (None, {}),
    ("", {}),
    ("cxr-nodule=live,cxr-pneumonia=off", {"cxr-nodule": ModelMode.LIVE, "cxr-pneumonia": ModelMode.OFF}),
    (" cxr-nodule = Shadow , ", {"cxr-nodule": ModelMode.SHADOW}),
    ('{"cxr-nodule": "live", "cxr-pneumonia": "shadow"}',
     {"cxr-nodule": ModelMode.LIVE, "cxr-pneumonia": ModelMode.SHADOW}),
])
def test_site_modes_setting(value: str | None, expected: dict[str, ModelMode]) -> None:
    assert parse_model_modes(value) == expected


def test_site_modes_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "modes.yaml"
    path.write_text("cxr-nodule: live\ncxr-pneumonia: off\n")
    assert parse_model_modes(str(path)) == {"cxr-nodule": ModelMode.LIVE, "cxr-pneumonia": ModelMode.OFF}
    with pytest.raises(ValueError, match="the file nope.yaml cannot be read"):
        parse_model_modes(str(tmp_path / "nope.yaml"))
    path.write_text("- cxr-nodule\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        parse_model_modes(str(path))


@pytest.mark.parametrize(("value", "message"), [
    ("cxr-nodule=maybe", "the mode of cxr-nodule must be one of live, shadow, off, not 'maybe'"),
    ("cxr-nodule", "the file cxr-nodule cannot be read"),
    ("cxr-nodule=live,cxr-pneumonia", "'cxr-pneumonia' is not name=MODE"),
    ("cxr-nodule=live,cxr-nodule=off", "cxr-nodule is named twice"),
    ("=live", "'' is not a model name"),
    ('{"cxr-nodule": 1}', "the mode of cxr-nodule must be one of"),
    ("{not json", "is not a valid JSON object"),
])
def test_bad_site_modes_are_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_model_modes(value)


def test_settings_refuse_a_bad_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECONDREADER_MODEL_MODES", "cxr-nodule=loud")
    with pytest.raises(ValidationError, match="SECONDREADER_MODEL_MODES: the mode of cxr-nodule must be one of"):
        Settings()
    monkeypatch.setenv("SECONDREADER_MODEL_MODES", "cxr-nodule=live")
    assert Settings().resolved_model_modes() == {"cxr-nodule": ModelMode.LIVE}
    monkeypatch.delenv("SECONDREADER_MODEL_MODES")
    assert Settings().resolved_model_modes() == {}


def test_the_site_overrides_the_card_and_unknown_names_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    cards = [load_card(ROOT / "models" / "cxr-nodule"), load_card(ROOT / "models" / "cxr-pneumonia")]
    assert site_modes(cards, {}) == {"cxr-nodule": ModelMode.SHADOW, "cxr-pneumonia": ModelMode.LIVE}
    with caplog.at_level(logging.WARNING):
        modes = site_modes(cards, {"cxr-nodule": ModelMode.LIVE, "cxr-pneumonia": ModelMode.OFF,
                                   "cxr-effusion": ModelMode.LIVE})
    assert modes == {"cxr-nodule": ModelMode.LIVE, "cxr-pneumonia": ModelMode.OFF}
    assert "cxr-effusion, which is not a loaded model" in caplog.text


def _finding(p: float | None, *, mode: str = "live", applicable: bool = True) -> FindingResult:
    reason = None if applicable else "cxr-nodule is validated on adults; patient age 004Y"
    return FindingResult("nodule", p, 0.5, 0.9, "cxr-nodule@1.6.0", mode=mode, applicable=applicable,
                         not_applicable_reason=reason)


def test_only_live_applicable_findings_route() -> None:
    live = _finding(0.95)
    shadow = _finding(0.95, mode="shadow")
    outside = _finding(None, applicable=False)
    assert live.routes and not shadow.routes and not outside.routes
    assert shadow.positive and shadow.urgent  # computed and shown as positive, but it does not route
    assert not outside.positive and not outside.urgent
    assert prioritise("screened", [live]).route is Route.URGENT
    assert prioritise("screened", [shadow]) == Priority(0, Route.NONE, "no-routing-finding")
    assert prioritise("screened", [outside]) == Priority(0, Route.NONE, "no-routing-finding")
    negative = FindingResult("pneumonia", 0.1, 0.5, 0.9, "cxr-pneumonia@1.1.0")
    assert prioritise("screened", [negative, shadow, outside]) == prioritise("screened", [negative])
    assert prioritise("screened", []) == Priority(0, Route.NONE, "no-routing-finding")  # every model off


def test_a_not_applicable_finding_has_a_reason_and_no_probability() -> None:
    with pytest.raises(ValueError, match="needs its reason"):
        FindingResult("nodule", None, 0.5, 0.9, "m@1", applicable=False)
    with pytest.raises(ValueError, match="has no probability"):
        FindingResult("nodule", 0.3, 0.5, 0.9, "m@1", applicable=False, not_applicable_reason="r")
    with pytest.raises(ValueError, match="probability of nodule must be in"):
        FindingResult("nodule", None, 0.5, 0.9, "m@1")
    with pytest.raises(ValueError, match="mode of nodule must be live or shadow"):
        FindingResult("nodule", 0.3, 0.5, 0.9, "m@1", mode="off")
