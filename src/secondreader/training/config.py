"""Training configuration (YAML), validated on load."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from secondreader.scoring.calibration import CalibrationMethod
from secondreader.training.losses import LossConfig

if TYPE_CHECKING:
    from secondreader.config import Settings

__all__ = ["ScheduleConfig", "TrainConfig", "load_config", "resolve_output", "run_digest"]


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["medmnist_npz", "manifest", "lesion_insertion", "nih_pneumonia", "jsrt"] = "medmnist_npz"
    path: Path = Field(description="the .npz file, the CSV manifest, or for lesion_insertion the folder the "
                                   "backgrounds' paths are relative to (relative to the working directory)")
    finding: str = "pneumonia"
    display_name: str = "Pneumonia"
    image_size: int = Field(28, ge=8, le=1024, description="manifests: the side of the square model input the "
                                                         "DICOM images are prepared at (fine-tuning: the shipped "
                                                         "model's)")
    limit: int | None = Field(None, ge=8, description="use only N images of each split (smoke tests): evenly "
                                              "spaced in a MedMNIST file, the first N of a manifest")


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    class_: str = Field(alias="class")
    args: dict[str, Any]


class SaliencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["occlusion", "gradcam", "dense"] = "occlusion"
    mask_size: int = Field(7, ge=1)
    overlap: float = Field(0.5, ge=0, lt=1)
    layer: str | None = None
    smoothing_sigma: float = Field(1.0, ge=0, description="dense: Gaussian smoothing of the probability map (px)")
    flip_average: bool = Field(False, description="dense: average the map with the left-right mirror image's "
                               "(the network run on the flipped input), in evaluation and in serving")


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    max_lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    threads: int = Field(2, ge=1)
    workers: int = Field(1, ge=1, description="processes that fit the localisation folds and final model side "
                                              "by side (each with ``threads`` threads)")
    loader_workers: int = Field(0, ge=0, description="localisation: threads that prepare batches ahead of "
                                "the training step. 0 draws every batch in the step's thread from one "
                                "generator (the shipped recipes' stream); N >= 1 draws each batch from its "
                                "own seed (another stream: other weights, the same for any N)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto (the first CUDA device when there is one, else the CPU), cpu, cuda or "
                                    "cuda:N; `secondreader train --device` overrides it")
    mixed_precision: bool = Field(True, description="on a CUDA device, forward passes in bfloat16 autocast (the "
                                                    "loss and the weights stay float32); the CPU trains in float32")
    channels_last: bool = Field(False, description="the training step's network and inputs in channels-last memory "
                                "layout: the same arithmetic in another order, faster on the CPU "
                                "(benchmarks/nodule_train_step.py) but other weights in their last bits, so a "
                                "model trained with it is a new version; the saved weights are the same kind "
                                "of state dict, and serving is unchanged")


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.1
    contrast_gamma: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.1


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: CalibrationMethod = Field(
        "platt", description="fitted on the validation split: platt (sigmoid(a * logit + b)), temperature "
        "(b = 0) or isotonic (monotone, piecewise linear)")


class OperatingPointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["youden", "sensitivity", "specificity"] = "youden"
    sensitivity: float = Field(0.95, gt=0, le=1)
    specificity: float = Field(0.95, gt=0, lt=1, description="method specificity: the lowest threshold that "
                               "flags at most 1 - this share of validation's negatives (a review budget on "
                               "normal films)")
    urgent_specificity: float = Field(0.99, gt=0, lt=1)
    urgent_sensitivity: float | None = Field(
        None, gt=0, lt=1, description="the urgent point is also no lower than the score that keeps this share "
        "of validation's positives (the most confident), so that it stays above the operating point where "
        "every validation negative already scores below that")

    def describe(self) -> str:
        """The rule as a bundle records it (``operating_point_method``): ``youden`` or ``sensitivity 0.95``."""
        if self.method == "specificity":
            return f"specificity {self.specificity:g}"
        return "youden" if self.method == "youden" else f"sensitivity {self.sensitivity:g}"

    def describe_urgent(self) -> str:
        """How the urgent point was chosen, as a bundle records it."""
        share = (f", and no lower than the score that keeps {self.urgent_sensitivity:.0%} of the positives"
                 if self.urgent_sensitivity is not None else "")
        return f"specificity {self.urgent_specificity}{share} on validation"

    @classmethod
    def from_description(cls, text: str) -> OperatingPointConfig:
        """The rule a bundle recorded (a bare ``sensitivity``, from older bundles, is 0.95)."""
        method, _, value = text.partition(" ")
        if method == "youden":
            return cls(method="youden")
        if method == "sensitivity":
            return cls(method="sensitivity", sensitivity=float(value) if value else 0.95)
        if method == "specificity":
            return cls(method="specificity", specificity=float(value))
        raise ValueError(f"unknown operating point rule {text!r}")


class UnknownRegion(BaseModel):
    """A disc of a real background whose label is unknown (a real opacity that may be a lesion):
    centre and radius as fractions of the picture's rows, columns and width."""

    model_config = ConfigDict(extra="forbid")
    row: float = Field(ge=0, le=1)
    col: float = Field(ge=0, le=1)
    radius: float = Field(gt=0, le=0.5)
    note: str = Field("", description="what is there and why its label is unknown (goes into the model card)")


class BackgroundConfig(BaseModel):
    """One real chest radiograph used as a background for inserted lesions."""

    model_config = ConfigDict(extra="forbid")
    id: str
    path: Path | None = Field(None, description="DICOM or PNG, relative to data.path")
    pydicom_data: str | None = Field(None, description="or a pydicom-data file name (get_testdata_file)")
    window: Literal["serving", "percentile"] = Field(
        "serving", description="serving: the screening chain's decode and window; percentile: stored values "
                               "with a 0.5-99.5 percentile window (for a header window that does not fit)")
    flip_rows: bool = False
    invert: bool = False
    real_lesions: bool = Field(False, description="holds real, unannotated lesions: its lung pixels carry no "
                                                  "negative label in training and it is never a test fold")
    unknown: list[UnknownRegion] = Field(default_factory=list, description="real opacities of unknown nature: "
                                         "no label in training; in tests no nodule goes there and what the model "
                                         "finds there is neither a hit nor a false region")
    source: str = Field("", description="where it comes from and its licence (goes into the model card)")


#: one bound of ``LesionConfig.stretch_jitter`` (the two together stay under the whole range)
_Jitter = Annotated[float, Field(ge=0, le=0.45)]


class LesionConfig(BaseModel):
    """The lesion-insertion dataset and the localisation schedule (see ``training/lesions.py``)."""

    model_config = ConfigDict(extra="forbid")
    backgrounds: list[BackgroundConfig]
    input_size: int = Field(256, ge=64)
    work_size: int = Field(320, ge=64, description="side of a real background (and of a generated chest) "
                           "before geometric augmentation")
    supersample: int = Field(1, ge=1, le=8, description="training pictures are sampled on a grid this many "
                             "times finer than input_size and area-averaged down, as serving area-reduces a "
                             "radiograph (with work_size = input_size x supersample, the identity transform is "
                             "serving's resize)")
    per_background: int = Field(300, ge=1, description="training pictures per real background")
    generated_bases: int = Field(150, ge=0, description="generated chests (each reused with new geometry)")
    generated: int = Field(900, ge=0, description="training pictures on generated chests")
    validation_per_background: int = Field(40, ge=1)
    validation_generated: int = Field(200, ge=1)
    test_per_background: int = Field(120, ge=2)
    test_generated: int = Field(200, ge=2)
    positive_fraction: float = Field(0.6, gt=0, lt=1)
    max_nodules: int = Field(3, ge=1)
    diameter_fraction: tuple[float, float] = (0.02, 0.085)
    contrast: tuple[float, float] = (0.03, 0.16)
    test_diameter_fraction: tuple[float, float] = (0.025, 0.08)
    test_attenuation: tuple[float, float] = (0.06, 0.3)
    test_max_side: int = Field(1024, ge=256, description="sources are area-reduced to this side before test "
                                                         "lesions are inserted at that resolution")
    scale: tuple[float, float] = (0.85, 1.2)
    rotate_deg: float = 8.0
    translate: float = 0.06
    elastic: float = Field(0.0, ge=0, le=0.1, description="smooth random displacement of real and generated "
                           "backgrounds before nodules go in: its largest shift, a fraction of the side")
    density_field: float = Field(0.0, ge=0, le=0.5, description="a smooth random gain on the background's "
                                 "display values (1 +/- this at most), so its anatomy's density varies")
    crop: int = Field(128, ge=32, description="training crop side (the network is fully convolutional)")
    crop_scale: tuple[float, float] = (0.8, 1.25)
    lesion_crop_fraction: float = Field(0.5, ge=0, le=1, description="crops centred near a lesion")
    gamma: tuple[float, float] = (0.7, 1.4)
    blur_sigma: tuple[float, float] = (0.0, 1.5)
    blur_probability: float = 0.5
    stretch_jitter: tuple[_Jitter, _Jitter] = Field(
        (0.0, 0.0), description="after the serving chain's percentile stretch, a training picture's black point "
        "is raised by up to the first value and its white point lowered by up to the second (of the 0-1 range), "
        "as when a served image's field of view leaves out the film's dark border or bright labels")
    stretch_jitter_probability: float = Field(0.5, ge=0, le=1)
    noise_std: tuple[float, float] = (0.0, 0.03)
    distractor_fraction: float = Field(0.0, ge=0, le=1, description="training pictures that get 1-4 "
                                       "non-nodules (wires, clips, electrodes) as negatives")
    vessel_mimic_fraction: float = Field(0.0, ge=0, le=1, description="training pictures that get 1-3 "
                                         "branching vessel trees with end-on vessels beside them (nodule "
                                         "look-alikes made of lung anatomy) as negatives")
    hard_negative_epochs: list[int] = Field(default_factory=list, description="after these epochs, find the "
                                            "model's false peaks on the real backgrounds' training pictures")
    hard_negative_fraction: float = Field(0.0, ge=0, le=1, description="crops centred on one of a picture's "
                                          "false peaks, when it has some")
    dice_weight: float = 1.0
    pos_weight: float = Field(1.0, gt=0, description="weight of nodule pixels in the cross-entropy")
    hit_radius_min: float = Field(4.0, description="model pixels: a detection this close to a lesion centre hits it")
    folds: Literal["leave_one_background_out", "none"] = "leave_one_background_out"
    fold_backgrounds: int | None = Field(
        None, ge=1, description="a learning curve: each fold's model trains, and is calibrated, on only this many "
        "of the other real backgrounds, drawn for each fold from the seed, each of them shown per_background x "
        "(others / this) times, so that the fold sees as many real pictures as one trained on all the others "
        "(its test images do not change); only with --folds-only, as a bundle's figures come from folds like its model")


class RealNoduleConfig(BaseModel):
    """``data.kind: jsrt``: a nodule localiser trained and cross-validated on JSRT's real nodules
    (``data.path``: the ``jsrt`` folder), its training films augmented, normal films also given
    simulated (model A) nodules, and more normal backgrounds from NIH no-finding films."""

    model_config = ConfigDict(extra="forbid")
    folds: int = Field(5, ge=2, description="cross-validation folds over the JSRT films (stratified by nodule); "
                       "each fold's model is calibrated on the next fold and tested on its own")
    validation_fold: int = Field(0, ge=0, description="the fold the shipped model is calibrated on (it trains "
                                 "on the others)")
    copies: int = Field(6, ge=1, description="augmented training pictures of each JSRT film")
    normals_path: Path | None = Field(None, description="the nih-pneumonia folder: its no-finding films of "
                                      "training patients (realdata.nih_split) are extra normal backgrounds")
    normal_copies: int = Field(2, ge=1, description="augmented pictures of each extra normal film")
    max_normals: int | None = Field(None, ge=1, description="use at most this many extra normal films")
    insert_fraction: float = Field(0.5, ge=0, le=1, description="normal films' pictures that get 1-max_nodules "
                                   "simulated (model A) nodules in their lungs")
    limit: int | None = Field(None, ge=4, description="smoke tests: only this many JSRT films")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    description: str
    seed: int = 0
    data: DataConfig
    network: NetworkConfig
    loss: LossConfig | None = Field(None, description="losses from monai.losses, weighted and summed; without it "
                                    "the recipe's built-in loss (cross-entropy; for dense maps weighted "
                                    "cross-entropy plus a soft Dice)")
    saliency: SaliencyConfig = SaliencyConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    operating_point: OperatingPointConfig = OperatingPointConfig()
    lesions: LesionConfig | None = None
    real_nodules: RealNoduleConfig | None = None
    scope: dict[str, Any] | None = Field(None, description="where the model applies (the bundle's "
                                         "secondreader.scope: age_years, unknown_age, views, modalities, body_parts, "
                                         "population, limits); screening reports findings outside it as not "
                                         "applicable")
    targets: dict[str, float] = Field(default_factory=dict, description="held-out figures the model must reach "
                                      "to default to mode live (else shadow): metric name -> minimum, e.g. "
                                      "auroc: 0.8 (classification: the test split's; localisation on real "
                                      "nodules: study_auroc, froc_1)")
    init_from: Path | None = Field(None, description="fine-tune: start from this bundle's weights (its network "
                                                     "and input normalisation must match)")
    output_dir: Path = Field(description="where ``train()`` writes the bundle. Still accepted in a config (older "
                             "configs name models/<name>), but `secondreader train` sets it: a new folder under "
                             "$SECONDREADER_HOME/runs/, or --out, or with --into-models the models folder's <name>")
    checkpoint_dir: Path | None = Field(None, description="per-epoch checkpoints; default runs/<name>")
    provenance: dict[str, Any] = Field(default_factory=dict)
    changelog: dict[str, str] = Field(default_factory=dict, description="what each version changed, newest "
                                      "first; the bundle's changelog. When given, it must name `version`.")

    @model_validator(mode="after")
    def _changelog_names_version(self) -> TrainConfig:
        if self.changelog and self.version not in self.changelog:
            raise ValueError(f"changelog has no entry for version {self.version}: say what this version changes")
        return self

    @model_validator(mode="after")
    def _one_loss(self) -> TrainConfig:
        lc = self.lesions
        if self.loss is not None and lc is not None and (lc.pos_weight != 1.0 or lc.dice_weight != 1.0):
            raise ValueError("lesions.pos_weight and lesions.dice_weight weight the built-in loss; with `loss:` "
                             "give each term its own weight instead")
        return self


def load_config(path: Path) -> TrainConfig:
    return TrainConfig.model_validate(yaml.safe_load(path.read_text()))


def resolve_output(cfg: TrainConfig, out: Path | None = None, into_models: bool = False,
                   settings: Settings | None = None, now: datetime | None = None) -> Path:
    """Where ``secondreader train`` writes the bundle of ``cfg`` (the config's own ``output_dir`` is not used):

    - by default a new folder ``<home>/runs/<name>-<version>-<UTC YYYYmmddTHHMMSSZ>`` (``home``:
      SECONDREADER_HOME), so that retraining never overwrites a shipped bundle;
    - ``out``: that folder, refused when it already holds a bundle (``configs/metadata.json``);
    - ``into_models``: ``<models dir>/<name>`` (SECONDREADER_MODELS_DIR), replacing the shipped bundle.

    Nothing is created here; training creates the folder."""
    if out is not None and into_models:
        raise ValueError("--out and --into-models are exclusive: a bundle goes to one place")
    if settings is None:
        from secondreader.config import Settings

        settings = Settings()
    if into_models:
        return (settings.models_dir / cfg.name).absolute()
    if out is not None:
        if (out / "configs" / "metadata.json").exists():
            raise ValueError(f"{out} already holds a bundle; give an empty or new folder to --out (or "
                             "--into-models to replace the shipped bundle)")
        return out.absolute()
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    runs = settings.home / "runs"
    path = runs / f"{cfg.name}-{cfg.version}-{stamp}"
    n = 1
    while path.exists():  # two runs in the same second
        n += 1
        path = runs / f"{cfg.name}-{cfg.version}-{stamp}-{n}"
    return path.absolute()


def run_digest(cfg: TrainConfig, *inputs: str, with_code: bool = True) -> str:
    """What a run's saved state (a checkpoint, the folds it finished) depends on, for ``--resume``: the
    configuration less its labels and places (a new version number alone keeps the state), the installed
    secondreader code and numeric libraries (any edit or upgrade refits), and ``inputs``, digests of
    the data the run read and the kind of device it trains on. ``with_code`` False leaves the code out
    (the caller digests the code its fits run among ``inputs``); the numeric libraries stay in."""
    # the device as written (auto, cuda:1, --device) is left out: the kind it resolved to is an input;
    # so are the worker processes, which do not change the weights (a run stopped with two resumes with one)
    relevant = cfg.model_dump(mode="json", exclude={
        "checkpoint_dir": True, "output_dir": True, "provenance": True, "description": True, "version": True,
        "changelog": True, "schedule": {"device": True, "mixed_precision": True, "workers": True}})
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    for part in ((_code_digest(),) if with_code else (_library_digest(),)) + inputs:
        h.update(part.encode())
    return h.hexdigest()


@functools.cache
def _code_digest() -> str:
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    h.update(_library_digest().encode())
    return h.hexdigest()


@functools.cache
def _library_digest() -> str:
    return ",".join(f"{name}=={importlib.metadata.version(name)}"
                    for name in ("torch", "monai", "numpy", "scipy", "scikit-image"))
