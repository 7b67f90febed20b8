"""Training-step speed of the cxr-nodule network (the U-Net of training/configs/cxr-nodule.yaml):
forward, loss, backward and an AdamW step on random crops, on the CPU and, where there is one, on
the GPU (float32 and bfloat16 autocast), measured in one run. The loss is the config's (its
``loss:`` terms of monai.losses, or the built-in one); on the CPU the built-in loss and the
channels-last layout (``schedule.channels_last``) are measured beside it, alternating in short rounds
so that a loaded machine slows all alike.

    python benchmarks/nodule_train_step.py [--seconds 10] [--threads N] [--batch B]

Prints a table of steps/s and crops/s with the ratio to the CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from monai.networks.nets import UNet

from secondreader.training.common import training_memory_format
from secondreader.training.config import load_config
from secondreader.training.dense.fit import dense_loss
from secondreader.training.losses import Loss, describe_loss

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "cxr-nodule.yaml"


def _stepper(device: str, loss_fn: Loss, *, batch: int, crop: int, bf16: bool,
             channels_last: bool = False) -> Callable[[], None]:
    cfg = yaml.safe_load(CONFIG.read_text())
    torch.manual_seed(0)
    layout = training_memory_format(channels_last)
    network = UNet(**cfg["network"]["args"]).to(device, memory_format=layout)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, crop, crop, device=device).contiguous(memory_format=layout)
    target = (torch.rand(batch, 1, crop, crop, device=device) > 0.99).float()
    weight = torch.ones_like(target)

    def step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=bf16):
            out = network(x)
        loss = loss_fn(out.float(), target, weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()

    for _ in range(5):
        step()
    return step


def steps_per_second(device: str, losses: list[tuple[Loss, bool]], *, batch: int, crop: int, seconds: float,
                     bf16: bool, rounds: int = 5) -> list[float]:
    """Steps/s with each of ``losses`` (a loss, and whether the step is channels-last), measured in
    ``rounds`` alternating windows."""
    steppers = [_stepper(device, fn, batch=batch, crop=crop, bf16=bf16, channels_last=cl) for fn, cl in losses]
    counts, spent = [0] * len(losses), [0.0] * len(losses)
    for _ in range(rounds):
        for k, step in enumerate(steppers):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds:
                step()
                counts[k] += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            spent[k] += time.perf_counter() - t0
    return [n / t for n, t in zip(counts, spent, strict=True)]


def main() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=int(cfg["schedule"]["threads"]))
    parser.add_argument("--batch", type=int, default=int(cfg["schedule"]["batch_size"]))
    args = parser.parse_args()
    crop = int(cfg["lesions"]["crop"])
    torch.set_num_threads(args.threads)
    train_cfg = load_config(CONFIG)
    configured, built_in = dense_loss(train_cfg), dense_loss(train_cfg.model_copy(update={"loss": None}))
    named = describe_loss(train_cfg.loss, "the built-in loss")
    cpu = f"cpu ({args.threads} thread{'s' if args.threads > 1 else ''})"
    rates = steps_per_second("cpu", [(configured, False), (built_in, False), (configured, True)], batch=args.batch,
                             crop=crop, seconds=args.seconds, bf16=False)
    rows = [(cpu, rates[0])]
    if train_cfg.loss is not None:
        rows.append((f"{cpu}, the built-in loss instead", rates[1]))
    rows.append((f"{cpu}, channels-last", rates[2]))
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for label, bf16 in (("fp32", False), ("bf16 autocast", True)):
            (rate,) = steps_per_second("cuda", [(configured, False)], batch=args.batch, crop=crop,
                                       seconds=args.seconds, bf16=bf16)
            rows.append((f"cuda {name} {label}", rate))
    base = rows[0][1]
    print(f"cxr-nodule training step: batch {args.batch} x 1 x {crop} x {crop}; loss: {named}")
    print("| device | steps/s | crops/s | vs CPU |\n|---|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate * args.batch:.0f} | {rate / base:.1f}x |")


if __name__ == "__main__":
    main()
