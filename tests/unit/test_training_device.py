"""Which device ``secondreader train`` uses: the config's ``schedule.device`` or ``--device``; CUDA
asked for where there is none is refused with a clear error, never trained on the CPU instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from secondreader.cli import main
from secondreader.errors import ModelError
from secondreader.training.config import load_config
from secondreader.training.train import training_device, training_hardware

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "cxr-pneumonia.yaml"


def test_auto_takes_cuda_when_there_is_one_and_mixed_precision_only_there() -> None:
    device, amp = training_device("auto", True)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert amp == torch.cuda.is_available()
    assert training_device("cpu", True) == (torch.device("cpu"), False)
    hardware = training_hardware(torch.device("cpu"), False)
    assert hardware["device"] == "cpu, float32"
    assert f" {torch.get_num_threads()} threads (" in hardware["machine"]  # and the CPU's model name
    assert hardware["machine"].endswith("; cpu, float32")


def test_the_config_names_a_device_or_auto() -> None:
    cfg = load_config(CONFIG)
    assert cfg.schedule.device == "auto" and cfg.schedule.mixed_precision
    raw = cfg.model_dump(mode="json", by_alias=True)
    for bad in ("gpu", "cuda:x", "CPU"):
        with pytest.raises(ValueError, match="device"):
            type(cfg).model_validate({**raw, "schedule": {**raw["schedule"], "device": bad}})
    with pytest.raises(ModelError, match="not one of auto, cpu, cuda or cuda:N"):
        training_device("gpu", True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_train_refuses_cuda_without_a_cuda_device(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["output_dir"], raw["checkpoint_dir"] = str(tmp_path / "bundle"), str(tmp_path / "runs")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--device", "cuda"]) == 1
    assert "device cuda was asked for but no CUDA device is available" in capfd.readouterr().err
    assert main(["train", str(config), "--device", "tpu"]) == 1
    assert "'tpu' is not one of auto, cpu, cuda or cuda:N" in capfd.readouterr().err
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "runs").exists()  # refused before training
