"""Training configuration (YAML), validated on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TrainConfig", "load_config"]


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["medmnist_npz", "manifest"] = "medmnist_npz"
    path: Path = Field(description="the .npz file or the CSV manifest (relative to the working directory)")
    finding: str = "pneumonia"
    display_name: str = "Pneumonia"
    limit: int | None = Field(None, ge=8, description="use only the first N images of each split (smoke tests)")


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    class_: str = Field(alias="class")
    args: dict[str, Any]


class SaliencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["occlusion", "gradcam"] = "occlusion"
    mask_size: int = Field(7, ge=1)
    overlap: float = Field(0.5, ge=0, lt=1)
    layer: str | None = None


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    max_lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    threads: int = Field(2, ge=1)


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.1
    contrast_gamma: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.1


class OperatingPointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["youden", "sensitivity"] = "youden"
    sensitivity: float = 0.95
    urgent_specificity: float = Field(0.99, gt=0, lt=1)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    description: str
    seed: int = 0
    data: DataConfig
    network: NetworkConfig
    saliency: SaliencyConfig = SaliencyConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    operating_point: OperatingPointConfig = OperatingPointConfig()
    output_dir: Path
    checkpoint_dir: Path | None = Field(None, description="per-epoch checkpoints; default runs/<name>")
    provenance: dict[str, Any] = Field(default_factory=dict)


def load_config(path: Path) -> TrainConfig:
    return TrainConfig.model_validate(yaml.safe_load(path.read_text()))
