"""``ModelCard``: a MONAI bundle's ``configs/metadata.json``, validated on load.

The bundle keeps MONAI's ``network_data_format`` and adds a ``secondreader`` section with what the
pipeline needs, as *named* maps: the network (a MONAI class and its arguments), per-finding labels
with their output channel, calibration and operating points, the input specification, how
saliency maps are made, and the Device UID that changes with every version. Two optional maps
say where and how the model may be used:

- ``scope`` (:class:`ModelScope`): the patients and images it was validated on (ages, views,
  modalities, body parts); screening reports its findings as *not applicable* outside it. A bundle
  without one applies everywhere.
- ``mode``: ``{"default": "live" | "shadow", "reason": ...}``, how a site runs it unless told
  otherwise (``SECONDREADER_MODEL_MODES``, :mod:`.modes`): ``live`` findings route studies,
  ``shadow`` findings are computed and shown but never route. Older bundles said
  ``"routing": {"enabled": false}`` for what is now ``shadow``; that is still read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dicom.age import PatientAge
from ..dicom.terms import BODY_PARTS, MODALITIES, VIEW_POSITIONS, shown
from ..errors import ModelError
from ..preprocessing import InputSpec
from ..scoring.calibration import Calibrator
from .modes import ModelMode

__all__ = ["FindingSpec", "ModelCard", "ModelMode", "ModelScope", "SaliencySpec", "bundle_dirs", "find_bundles",
           "load_card", "parse_mode", "parse_scope"]


#: Views a scope may name: the frontal and oblique View Position terms (a lateral view never).
_SCOPE_VIEWS = frozenset({"PA", "AP", "RLD", "LLD", "RLO", "LLO"})
_SCOPE_KEYS = frozenset({"age_years", "unknown_age", "views", "modalities", "body_parts", "population", "limits"})
_UNKNOWN_AGE = ("applies", "not_applicable")


def _words(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"


@dataclass(frozen=True, slots=True)
class ModelScope:
    """Where a model applies (``secondreader.scope`` in its metadata): the patients' ages in
    completed years (``age_min``/``age_max`` inclusive, ``None`` open), what a study whose age cannot
    be found gets (``unknown_age``: ``applies`` or ``not_applicable``), the View Positions,
    Modalities and Body Parts Examined it covers (upper case; an instance that does not say its
    view, modality or body part is accepted), and free text naming its data and other limits."""

    age_min: int | None
    age_max: int | None
    unknown_age: str
    views: tuple[str, ...]
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    population: str
    limits: str = ""

    def __post_init__(self) -> None:
        for name in ("age_min", "age_max"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"scope.age_years: {name[4:]} must be a whole number of years >= 0 or null")
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ValueError("scope.age_years: min must not be above max")
        if self.unknown_age not in _UNKNOWN_AGE:
            raise ValueError(f"scope.unknown_age must be applies or not_applicable, not {self.unknown_age!r}")
        for name in ("views", "modalities", "body_parts"):
            values = getattr(self, name)
            if not values or not all(isinstance(v, str) and v.strip() for v in values):
                raise ValueError(f"scope.{name} must be a non-empty list of names")
        if not set(self.views) <= _SCOPE_VIEWS:
            raise ValueError(f"scope.views: {', '.join(sorted(set(self.views) - _SCOPE_VIEWS))} is not a frontal "
                             "or oblique View Position (PA, AP, ...); a lateral view is never in scope")
        if not isinstance(self.population, str) or not self.population.strip():
            raise ValueError("scope.population must name the data the model was validated on")
        if not isinstance(self.limits, str):
            raise ValueError("scope.limits must be text")

    def ages(self) -> str:
        """The age range in words: "children aged 1-5 years", "adults aged 18 years and over"."""
        lo, hi = self.age_min, self.age_max
        who = "children" if hi is not None and hi < 18 else "adults" if lo is not None and lo >= 18 else "patients"
        if lo is not None and hi is not None:
            return f"{who} aged {lo} years" if lo == hi else f"{who} aged {lo}-{hi} years"
        if lo is not None:
            return f"{who} aged {lo} years and over"
        if hi is not None:
            return f"{who} aged up to {hi} years"
        return "patients of any age"

    def not_applicable(self, model: str, *, age: PatientAge | None, view: str | None = None,
                       modality: str | None = None, body_part: str | None = None) -> str | None:
        """Why ``model`` does not apply to an instance with these header facts (``None``: it
        applies). The reason names the model, its scope and the one header fact that falls
        outside it; the age only as :class:`PatientAge` renders it."""
        if modality and modality.upper() not in self.modalities:
            return f"{model} is validated on {_words(self.modalities)} images; Modality {shown(modality, MODALITIES)}"
        if body_part and body_part.upper() not in self.body_parts:
            return (f"{model} is validated on Body Part Examined {_words(self.body_parts)}; "
                    f"Body Part Examined {shown(body_part, BODY_PARTS)}")
        if view and view.upper() not in self.views:
            return f"{model} is validated on {_words(self.views)} views; View Position {shown(view, VIEW_POSITIONS)}"
        if self.age_min is None and self.age_max is None:
            return None
        if age is None:
            if self.unknown_age == "applies":
                return None
            return f"{model} is validated on {self.ages()}; patient age unknown"
        too_young = self.age_min is not None and age.years < self.age_min
        too_old = self.age_max is not None and age.years > self.age_max
        if too_young or too_old:
            return f"{model} is validated on {self.ages()}; patient age {age.text}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"age_years": [self.age_min, self.age_max], "unknown_age": self.unknown_age, "views": list(self.views),
                "modalities": list(self.modalities), "body_parts": list(self.body_parts),
                "population": self.population, "limits": self.limits}


def _names(spec: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = spec[key]
    if not isinstance(value, list):
        raise ValueError(f"scope.{key} must be a list of names")
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"scope.{key} must be a list of names")
    return tuple(v.strip().upper() for v in value)


def parse_scope(spec: object) -> ModelScope:
    """``secondreader.scope`` of a bundle's metadata → a :class:`ModelScope`.

    Raises
    ------
    ValueError
        Naming the field that is missing or wrong (``scope.age_years: ...``).
    """
    if not isinstance(spec, Mapping):
        raise ValueError("scope must be an object")
    unknown = sorted(set(spec) - _SCOPE_KEYS)
    if unknown:
        raise ValueError(f"scope has unknown field(s) {', '.join(unknown)}")
    missing = sorted(_SCOPE_KEYS - {"limits"} - set(spec))
    if missing:
        raise ValueError(f"scope lacks {', '.join(missing)}")
    ages = spec["age_years"]
    if not isinstance(ages, list) or len(ages) != 2:
        raise ValueError("scope.age_years must be [min, max] (either may be null)")
    for value in ages:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or float(value) != int(value)):
            raise ValueError("scope.age_years: min and max must be whole numbers of years or null")
    for key in ("unknown_age", "population", "limits"):
        if key in spec and not isinstance(spec[key], str):
            raise ValueError(f"scope.{key} must be text")
    return ModelScope(
        age_min=None if ages[0] is None else int(ages[0]),
        age_max=None if ages[1] is None else int(ages[1]),
        unknown_age=spec["unknown_age"],
        views=_names(spec, "views"),
        modalities=_names(spec, "modalities"),
        body_parts=_names(spec, "body_parts"),
        population=spec["population"],
        limits=spec.get("limits", ""),
    )


def parse_mode(secondreader: Mapping[str, Any]) -> tuple[ModelMode, str | None]:
    """The default mode of a bundle and why: ``secondreader.mode`` (``{"default": "live" |
    "shadow", "reason": ...}``), else, for bundles older than it, ``secondreader.routing``
    (``"enabled": false`` is ``shadow``), else ``live``.

    Raises
    ------
    ValueError
        When ``mode`` is not such an object (``off`` is a site's choice, never a bundle's default).
    """
    mode = secondreader.get("mode")
    if mode is not None:
        if not isinstance(mode, Mapping):
            raise ValueError("mode must be an object {default, reason}")
        default = mode.get("default")
        if default not in (ModelMode.LIVE.value, ModelMode.SHADOW.value):
            raise ValueError(f"mode.default must be live or shadow, not {default!r}")
        reason = mode.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("mode.reason must be text")
        return ModelMode(default), reason
    gate = secondreader.get("routing")
    if isinstance(gate, Mapping) and not bool(gate.get("enabled", True)):
        reason = gate.get("reason")
        return ModelMode.SHADOW, reason if isinstance(reason, str) else None
    return ModelMode.LIVE, None


@dataclass(frozen=True, slots=True)
class FindingSpec:
    """One output of a model: a finding code, its channel, calibration and operating points."""

    code: str
    channel: int
    display_name: str
    calibration: Calibrator
    operating_point: float
    urgent_point: float
    #: how the operating point was chosen on validation, as the bundle records it ("youden", "sensitivity 0.95")
    operating_point_method: str = "youden"

    def __post_init__(self) -> None:
        if not self.code or not self.code.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"finding code must be a simple identifier, not {self.code!r}")
        if self.channel < 0:
            raise ValueError(f"channel of {self.code} must be >= 0")
        if not 0.0 < self.operating_point < 1.0:
            raise ValueError(f"operating_point of {self.code} must be in (0, 1), not {self.operating_point}")
        if not self.operating_point <= self.urgent_point < 1.0:
            raise ValueError(f"urgent_point of {self.code} must be in [operating_point, 1)")


@dataclass(frozen=True, slots=True)
class SaliencySpec:
    """How heatmaps are made: ``occlusion`` (MONAI OcclusionSensitivity: how much the finding's logit
    drops when a ``mask_size`` square is replaced by the image mean), ``gradcam`` on ``layer``, or
    ``dense``: the network itself outputs a per-pixel logit map (a localisation model, see
    :mod:`secondreader.model.dense`). Its probability map is smoothed with a Gaussian of
    ``smoothing_sigma`` model pixels, after averaging with the mirror image's map when
    ``flip_average``; regions are its parts over ``region_floor`` whose peak reaches
    ``region_threshold`` (both probabilities on the map)."""

    method: str
    mask_size: int = 7
    overlap: float = 0.5
    layer: str | None = None
    smoothing_sigma: float = 1.0
    region_threshold: float = 0.5
    region_floor: float = 0.25
    flip_average: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("occlusion", "gradcam", "dense"):
            raise ValueError(f"saliency method must be occlusion, gradcam or dense, not {self.method!r}")
        if self.method == "dense" and not 0.0 < self.region_floor <= self.region_threshold < 1.0:
            raise ValueError("dense saliency needs 0 < region_floor <= region_threshold < 1")
        if self.smoothing_sigma < 0:
            raise ValueError("saliency smoothing_sigma must be >= 0")
        if self.method == "gradcam" and not self.layer:
            raise ValueError("gradcam saliency needs a layer")
        if self.mask_size < 1 or not 0.0 <= self.overlap < 1.0:
            raise ValueError("saliency mask_size must be >= 1 and overlap in [0, 1)")


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A validated model bundle (always-valid: the constructor checks everything)."""

    name: str
    version: str
    device_uid: str
    bundle_dir: Path
    network_class: str
    network_args: dict[str, Any]
    input_spec: InputSpec
    findings: tuple[FindingSpec, ...]
    saliency: SaliencySpec
    weights_file: str
    metadata: dict[str, Any]
    #: Where the model applies (``None``: everywhere).
    scope: ModelScope | None = None
    #: How a site runs it unless its settings say otherwise (live or shadow), and why.
    default_mode: ModelMode = ModelMode.LIVE
    mode_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"model name must be a plain name, not {self.name!r}")
        if not self.findings:
            raise ValueError(f"model {self.name} declares no findings")
        channels = [f.channel for f in self.findings]
        if len(set(channels)) != len(channels):
            raise ValueError(f"model {self.name} maps two findings to one channel")
        if not self.device_uid or not all(part.isdigit() for part in self.device_uid.split(".")):
            raise ValueError(f"model {self.name} has no valid Device UID")

    @property
    def routes(self) -> bool:
        """Whether this model's findings route studies by default (its default mode is ``live``).
        A site may run it otherwise (:mod:`.modes`); what decides is the mode screening runs it in."""
        return self.default_mode is ModelMode.LIVE

    @property
    def ref(self) -> str:
        """``name@version``, the model reference used in results."""
        return f"{self.name}@{self.version}"

    @property
    def weights_path(self) -> Path:
        return self.bundle_dir / "models" / self.weights_file


def check_shared_findings(cards: Sequence[ModelCard]) -> None:
    """Several models may report one finding code (a paediatric and an adult pneumonia model) only
    when no patient falls in two of their scopes: each declares a scope, their age ranges do not
    overlap, and at most one of them applies to a study whose age is unknown. Screening then
    reports the code once per study, from the model that applies.

    Raises
    ------
    ValueError
        Naming the two models and the code, when their scopes could both apply to one image.
    """
    by_code: dict[str, list[ModelCard]] = {}
    for card in cards:
        for spec in card.findings:
            by_code.setdefault(spec.code, []).append(card)
    for code, sharing in by_code.items():
        for i, a in enumerate(sharing):
            for b in sharing[i + 1:]:
                why = _overlap(a.scope, b.scope)
                if why is not None:
                    raise ValueError(f"models {a.name} and {b.name} both report finding {code!r} and {why}: give "
                                     "them scopes no patient falls in twice, or turn one off")


def _overlap(a: ModelScope | None, b: ModelScope | None) -> str | None:
    if a is None or b is None:
        return "one of them declares no scope"
    lo_a, hi_a = a.age_min or 0, a.age_max if a.age_max is not None else 10**6
    lo_b, hi_b = b.age_min or 0, b.age_max if b.age_max is not None else 10**6
    if lo_a <= hi_b and lo_b <= hi_a:
        return "their age ranges overlap"
    if a.unknown_age == "applies" and b.unknown_age == "applies":
        return "both apply when the age is unknown"
    return None


def _finding(code: str, spec: dict[str, Any]) -> FindingSpec:
    try:
        calibration = Calibrator.from_json(spec.get("calibration", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"finding {code}: {exc}") from None
    return FindingSpec(
        code=code,
        channel=int(spec["channel"]),
        display_name=str(spec.get("display_name", code)),
        calibration=calibration,
        operating_point=float(spec["operating_point"]),
        urgent_point=float(spec.get("urgent_point", spec["operating_point"])),
        operating_point_method=str(spec.get("operating_point_method", "youden")),
    )


def load_card(bundle_dir: Path) -> ModelCard:
    """Read and validate ``bundle_dir/configs/metadata.json``.

    Raises
    ------
    ModelError
        When the file is missing, not JSON, or fails validation (the message names the field).
    """
    path = bundle_dir / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"model bundle {bundle_dir.name} has no configs/metadata.json") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"model bundle {bundle_dir.name}: metadata.json is not JSON ({exc.msg})") from None
    try:
        sr = meta["secondreader"]
        inp = sr["input"]
        default_mode, mode_reason = parse_mode(sr)
        card = ModelCard(
            name=str(meta["name"]),
            version=str(meta["version"]),
            device_uid=str(sr["device_uid"]),
            bundle_dir=bundle_dir,
            network_class=str(sr["network"]["class"]),
            network_args=dict(sr["network"]["args"]),
            input_spec=InputSpec(size=(int(inp["spatial_shape"][0]), int(inp["spatial_shape"][1])),
                                 mean=float(inp["mean"]), std=float(inp["std"])),
            findings=tuple(sorted((_finding(code, spec) for code, spec in sr["findings"].items()),
                                  key=lambda f: f.channel)),
            saliency=SaliencySpec(**sr["saliency"]),
            weights_file=str(sr.get("weights_file", "model.pt")),
            metadata=meta,
            scope=parse_scope(sr["scope"]) if sr.get("scope") is not None else None,
            default_mode=default_mode,
            mode_reason=mode_reason,
        )
    except KeyError as exc:
        raise ModelError(f"model bundle {bundle_dir.name}: metadata.json lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model bundle {bundle_dir.name}: {exc}") from None
    return card


def find_bundles(models_dir: Path) -> list[Path]:
    """The bundle folders under ``models_dir`` (those with a ``configs/metadata.json``), sorted."""
    return sorted(p.parent.parent for p in Path(models_dir).glob("*/configs/metadata.json"))


def bundle_dirs(models_dir: Path, names: Sequence[str] = ()) -> list[Path]:
    """The bundles a command runs: the ones ``names`` names under ``models_dir``, or every bundle
    there; a folder without any is a :class:`ModelError` that says which setting to set."""
    if names:
        return [Path(models_dir) / name for name in names]
    found = find_bundles(models_dir)
    if not found:
        raise ModelError(f"no model bundles under {Path(models_dir).name}/ (set SECONDREADER_MODELS_DIR)")
    return found
