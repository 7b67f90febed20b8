"""Training speed of the cxr-nodule recipe *with its batch preparation* (intensity augmentation,
percentile stretch, crops drawn from a real insertion pool), on the CPU and, where there is one, on
the GPU, with the batches drawn in the step's thread (``loader_workers: 0``, the shipped stream) and
prepared ahead by N threads, each in the default memory layout and channels-last
(``schedule.channels_last``), measured in one run. ``benchmarks/nodule_train_step.py`` measures the
network's step alone; the difference between the two is what the GPU waits for.

    python benchmarks/nodule_fit_speed.py [--steps 40] [--loaders 0 2 4 8] [--layouts default channels-last]
                                          [--threads N]

Needs the shared data (``../shared/data``, or ``--data``). Prints steps/s and the ratio to the CPU
with ``loader_workers: 0`` in the default layout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from secondreader.preprocessing import InputSpec
from secondreader.training.config import load_config
from secondreader.training.dense.data import build_pool, load_backgrounds
from secondreader.training.dense.fit import fit_dense_network

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training" / "configs" / "cxr-nodule.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=40, help="training steps per measurement (one epoch)")
    parser.add_argument("--loaders", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--layouts", nargs="+", choices=("default", "channels-last"),
                        default=["default", "channels-last"])
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's schedule.threads)")
    args = parser.parse_args()
    cfg = load_config(CONFIG).model_copy(deep=True)
    cfg.data.path = args.data
    lc = cfg.lesions
    assert lc is not None
    torch.set_num_threads(args.threads or cfg.schedule.threads)
    cfg.schedule.epochs = 1
    n = args.steps * cfg.schedule.batch_size
    t0 = time.perf_counter()
    backgrounds = load_backgrounds(lc, cfg.data.path)
    pool = build_pool(backgrounds, lc, per_background=n // (2 * len(backgrounds)) + 1, generated=n // 2 + 1,
                      seed=cfg.seed, stream=1)
    print(f"pool of {len(pool)} pictures in {time.perf_counter() - t0:.1f} s; {torch.get_num_threads()} torch "
          f"thread(s); batch {cfg.schedule.batch_size}, crop {lc.crop}")
    spec = InputSpec(size=(lc.input_size, lc.input_size), mean=0.0, std=1.0)
    members = np.arange(n)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"| device | loader_workers | layout | steps/s | vs the first row ({devices[0]}, loader_workers "
          f"{args.loaders[0]}, {args.layouts[0]}) |\n|---|---|---|---|---|", flush=True)
    base = 0.0
    for device in devices:
        for loaders, layout in ((n, layout) for n in args.loaders for layout in args.layouts):
            run = cfg.model_copy(deep=True)
            run.schedule.device, run.schedule.loader_workers = device, loaders
            run.schedule.channels_last = layout == "channels-last"
            fit_dense_network(run, pool, members[: 4 * cfg.schedule.batch_size], spec, 1, lambda: None)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fit_dense_network(run, pool, members, spec, 1, lambda: None)
            if device == "cuda":
                torch.cuda.synchronize()
            rate = args.steps / (time.perf_counter() - t)
            base = base or rate
            # each row as it is measured (flushed): a run cut short by a time limit keeps its rows
            name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
            print(f"| {name} ({'bf16 autocast' if device == 'cuda' and cfg.schedule.mixed_precision else 'fp32'}) "
                  f"| {loaders} | {layout} | {rate:.2f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
