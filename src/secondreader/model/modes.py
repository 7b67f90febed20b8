"""Per-model mode at a site (``SECONDREADER_MODEL_MODES``): live, shadow or off, without editing
the bundle.

- ``live``: the model's findings route studies (priority, discordance, worklist, the audit's
  positives);
- ``shadow``: its findings are computed, recorded and shown (result, viewer, DICOM outputs,
  metrics, the worklist's flag rates) but never route, so a site sees what it would send to review
  before it goes live;
- ``off``: the model is not run; its findings are absent from results, and the result's
  ``models[]`` lists it with ``"mode": "off"``.

A model the setting does not name runs in its card's default mode (``secondreader.mode.default``:
``shadow`` for a model that missed its held-out targets).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Protocol

import yaml

__all__ = ["ModelMode", "parse_model_modes", "site_modes"]


class ModelMode(str, Enum):
    """How a site runs a model: ``live`` (its findings route studies), ``shadow`` (computed,
    recorded and shown, never routing), ``off`` (not run)."""

    LIVE = "live"
    SHADOW = "shadow"
    OFF = "off"


logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MODES = ", ".join(m.value for m in ModelMode)


def _mapping(pairs: Iterable[tuple[object, object]], where: str) -> dict[str, ModelMode]:
    modes: dict[str, ModelMode] = {}
    for name, mode in pairs:
        if mode is False:  # YAML 1.1 reads an unquoted `off` as false
            mode = ModelMode.OFF.value
        if not isinstance(name, str) or not _NAME.fullmatch(name.strip()):
            raise ValueError(f"{where}: {name!r} is not a model name")
        if not isinstance(mode, str) or mode.strip().lower() not in {m.value for m in ModelMode}:
            raise ValueError(f"{where}: the mode of {name.strip()} must be one of {_MODES}, not {mode!r}")
        if name.strip() in modes:
            raise ValueError(f"{where}: {name.strip()} is named twice")
        modes[name.strip()] = ModelMode(mode.strip().lower())
    return modes


def parse_model_modes(value: str | None) -> dict[str, ModelMode]:
    """``SECONDREADER_MODEL_MODES`` → ``{model name: mode}``.

    The value is ``name=MODE`` pairs, comma-separated (``cxr-nodule=live,cxr-pneumonia=off``), a
    JSON object (``{"cxr-nodule": "live"}``), or the path of a YAML or JSON file holding such a
    mapping. Empty or unset: no override.

    Raises
    ------
    ValueError
        For a mode that is not live, shadow or off, a malformed entry, or a file that cannot be read.
    """
    where = "SECONDREADER_MODEL_MODES"
    text = (value or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{where} is not a valid JSON object") from None
        return _mapping(data.items(), where)
    if "=" in text:
        pairs = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            name, sep, mode = entry.partition("=")
            if not sep:
                raise ValueError(f"{where}: {entry!r} is not name=MODE")
            pairs.append((name, mode))
        return _mapping(pairs, where)
    path = Path(text)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"{where}: the file {path.name} cannot be read ({exc.strerror or 'I/O error'}); "
                         "give name=MODE pairs, a JSON object or a YAML file") from None
    except yaml.YAMLError:
        raise ValueError(f"{where}: the file {path.name} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: the file {path.name} must hold a mapping of model names to modes")
    return _mapping(data.items(), f"{where} ({path.name})")


class _Card(Protocol):
    """What :func:`site_modes` reads of a model card (:class:`.card.ModelCard` has it; the card
    module imports this one, so the card is described here rather than imported)."""

    @property
    def name(self) -> str: ...
    @property
    def ref(self) -> str: ...
    @property
    def default_mode(self) -> ModelMode: ...


def site_modes(cards: Iterable[_Card], overrides: Mapping[str, ModelMode]) -> dict[str, ModelMode]:
    """Each model's mode at this site: the setting's, else its card's default. A name in the
    setting that matches no loaded model is warned about (a typo would otherwise go unnoticed),
    never fatal."""
    cards = list(cards)
    known = {card.name for card in cards}
    for name in sorted(set(overrides) - known):
        logger.warning("SECONDREADER_MODEL_MODES names %s, which is not a loaded model (loaded: %s); ignored",
                       name, ", ".join(sorted(known)) or "none")
    modes = {card.name: ModelMode(overrides.get(card.name, card.default_mode)) for card in cards}
    for card in cards:
        if modes[card.name] is not card.default_mode:
            logger.info("model %s runs %s at this site (its card's default: %s)", card.ref, modes[card.name].value,
                        card.default_mode.value)
    return modes
