"""``ModelCard``: a MONAI bundle's ``configs/metadata.json``, validated on load.

The bundle keeps MONAI's ``network_data_format`` and adds a ``secondreader`` section with what the
pipeline needs, as *named* maps: the network (a MONAI class and its arguments), per-finding labels
with their output channel, calibration and operating points, the input specification, how
saliency maps are made, and the Device UID that changes with every version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..preprocessing import InputSpec
from ..scoring.calibration import Calibrator

__all__ = ["FindingSpec", "ModelCard", "SaliencySpec", "find_bundles", "load_card"]


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
        """Whether this model's findings may route studies (priority, discordance). A bundle whose
        held-out metrics missed its targets says ``"routing": {"enabled": false, "reason": ...}``:
        its findings, heatmaps and regions are still reported, marked ``"routes": false``."""
        gate = self.metadata.get("secondreader", {}).get("routing", {})
        return bool(gate.get("enabled", True)) if isinstance(gate, dict) else True

    @property
    def ref(self) -> str:
        """``name@version``, the model reference used in results."""
        return f"{self.name}@{self.version}"

    @property
    def weights_path(self) -> Path:
        return self.bundle_dir / "models" / self.weights_file


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
        )
    except KeyError as exc:
        raise ModelError(f"model bundle {bundle_dir.name}: metadata.json lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model bundle {bundle_dir.name}: {exc}") from None
    return card


def find_bundles(models_dir: Path) -> list[Path]:
    """The bundle folders under ``models_dir`` (those with a ``configs/metadata.json``), sorted."""
    return sorted(p.parent.parent for p in Path(models_dir).glob("*/configs/metadata.json"))
