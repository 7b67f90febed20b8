"""Which device ``secondreader train`` uses: the config's ``schedule.device`` or ``--device``; CUDA
asked for where there is none is refused with a clear error, never trained on the CPU instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from secondreader.cli import main
from secondreader.errors import ModelError
from secondreader.model.network import build_network
from secondreader.training.common import to_layout, training_device, training_hardware, training_memory_format
from secondreader.training.config import load_config

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "cxr-pneumonia.yaml"
NODULE = CONFIG.with_name("cxr-nodule-simulated.yaml")


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


def test_a_channels_last_step_computes_what_the_default_layout_does() -> None:
    """``schedule.channels_last`` changes the order of the arithmetic, not the sums: one forward and
    backward pass of the shipped U-Net from the same weights on the same batch in either layout."""
    cfg = load_config(NODULE)
    assert not cfg.schedule.channels_last, "the shipped 1.6.0 weights were trained in the default layout"
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    results = []
    for channels_last in (False, True):
        torch.manual_seed(1)
        network = build_network(cfg.network.class_, cfg.network.args, dense=True)
        layout = training_memory_format(channels_last)
        to_layout(network, layout)
        out = network(x.to(memory_format=layout))
        out.square().mean().backward()
        results.append((out.detach().contiguous(), {k: p.grad.contiguous() for k, p in network.named_parameters()
                                                      if p.grad is not None}))
        # the layout really changed: a 4-D weight with more than one input channel is no longer contiguous
        assert any(p.dim() == 4 and not p.is_contiguous() for p in network.parameters()) == channels_last
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a, out_b, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-3, atol=1e-6), name
    hardware = training_hardware(torch.device("cpu"), False, channels_last=True)
    assert hardware["device"] == "cpu, float32, channels-last"
