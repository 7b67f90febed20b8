"""Training-step speed of the cxr-nodule network (the U-Net of training/configs/cxr-nodule.yaml):
forward, loss, backward and an AdamW step on random crops, on the CPU and, where there is one, on
the GPU (float32 and bfloat16 autocast), measured in one run.

    python benchmarks/nodule_train_step.py [--seconds 10] [--threads N] [--batch B]

Prints a table of steps/s and crops/s with the ratio to the CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from monai.networks.nets import UNet

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "cxr-nodule.yaml"


def steps_per_second(device: str, *, batch: int, crop: int, seconds: float, bf16: bool) -> float:
    cfg = yaml.safe_load(CONFIG.read_text())
    torch.manual_seed(0)
    network = UNet(**cfg["network"]["args"]).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, crop, crop, device=device)
    target = (torch.rand(batch, 1, crop, crop, device=device) > 0.99).float()

    def step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = F.binary_cross_entropy_with_logits(network(x).float(), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()

    for _ in range(5):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=int(cfg["schedule"]["threads"]))
    parser.add_argument("--batch", type=int, default=int(cfg["schedule"]["batch_size"]))
    args = parser.parse_args()
    crop = int(cfg["lesions"]["crop"])
    torch.set_num_threads(args.threads)
    rows = [(f"cpu ({args.threads} thread{'s' if args.threads > 1 else ''})",
             steps_per_second("cpu", batch=args.batch, crop=crop, seconds=args.seconds, bf16=False))]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        rows.append((f"cuda {name} fp32", steps_per_second("cuda", batch=args.batch, crop=crop,
                                                            seconds=args.seconds, bf16=False)))
        rows.append((f"cuda {name} bf16 autocast", steps_per_second("cuda", batch=args.batch, crop=crop,
                                                                     seconds=args.seconds, bf16=True)))
    base = rows[0][1]
    print(f"cxr-nodule training step: batch {args.batch} x 1 x {crop} x {crop}")
    print("| device | steps/s | crops/s | vs CPU |\n|---|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate * args.batch:.0f} | {rate / base:.1f}x |")


if __name__ == "__main__":
    main()
