"""Speed of the percentile stretch's quantiles in a cxr-nodule training batch (16 pictures of
256 x 256, the 0.5th and 99.5th percentiles of each): ``secondreader.training.dense.inputs._quantiles``
(one ``numpy.partition`` per row) against two ``torch.kthvalue`` calls per quantile (what it
replaced; the same values bit for bit) and ``torch.quantile`` (which sorts every row); then a whole
batch's preparation (intensity augmentation, stretch, crops, as ``cxr-nodule.yaml`` configures them,
on random pictures) with the quantiles each of the first two ways. Each table alternates its ways
in rounds in one run, so that a loaded machine slows all alike.

    python benchmarks/percentile_stretch.py [--seconds 6] [--batch 16] [--side 256]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from secondreader.preprocessing import InputSpec
from secondreader.training.config import load_config
from secondreader.training.dense import augment, inputs
from secondreader.training.dense.inputs import _quantiles
from secondreader.training.lesions import Nodule

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "cxr-nodule.yaml"

QS = (0.005, 0.995)


def by_kthvalue(flat: torch.Tensor) -> list[torch.Tensor]:
    out = []
    n = flat.shape[1]
    for q in QS:
        position = q * (n - 1)
        k = int(math.floor(position))
        below = flat.kthvalue(k + 1, dim=1).values
        out.append(below if k + 1 >= n else below + (flat.kthvalue(k + 2, dim=1).values - below) * (position - k))
    return out


def timed(ways: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Milliseconds per call of each way, alternating in five rounds."""
    counts, spent = dict.fromkeys(ways, 0), dict.fromkeys(ways, 0.0)
    for _ in range(5):
        for name, way in ways.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds / 5 / len(ways):
                way()
                counts[name] += 1
            spent[name] += time.perf_counter() - t0
    return {name: 1000 * spent[name] / counts[name] for name in ways}


def table(title: str, ms: dict[str, float]) -> None:
    first = next(iter(ms.values()))
    print(f"{title}\n| by | ms per batch | vs the first |\n|---|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {value / first:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a fit prepares its batches
    flat = torch.rand(args.batch, args.side * args.side, generator=torch.Generator().manual_seed(0)) ** 2
    ways: dict[str, Callable[[], object]] = {
        "numpy.partition (_quantiles)": lambda: _quantiles(flat, QS),
        "torch.kthvalue, twice per quantile": lambda: by_kthvalue(flat),
        "torch.quantile": lambda: [torch.quantile(flat, q, dim=1) for q in QS],
    }
    assert all(torch.equal(a, b) for a, b in zip(_quantiles(flat, QS), by_kthvalue(flat), strict=True))
    table(f"percentile stretch quantiles, batch {args.batch} x {args.side} x {args.side}, one thread",
          timed(ways, args.seconds))

    lc = load_config(CONFIG).lesions
    assert lc is not None
    spec = InputSpec(size=(args.side, args.side), mean=0.5, std=0.25)
    pictures = flat.view(args.batch, 1, args.side, args.side)
    target, weight = torch.zeros_like(pictures), torch.ones_like(pictures)
    nodules = [[Nodule(args.side / 2, args.side / 2, args.side / 32, 0.1, "A")] for _ in range(args.batch)]
    g = torch.Generator().manual_seed(1)

    def prepare(quantiles: Callable[[torch.Tensor, tuple[float, ...]], list[torch.Tensor]]) -> Callable[[], object]:
        def run() -> object:
            inputs._quantiles = quantiles  # type: ignore[assignment]
            try:
                x = augment._augment_intensity(pictures, lc, g)
                x = inputs.standardise(x, spec, points=augment._stretch_points(args.batch, lc, g))
                return augment._crops(x, target, weight, nodules, lc, g)
            finally:
                inputs._quantiles = _quantiles
        return run

    table(f"a cxr-nodule batch's preparation ({args.batch} pictures of {args.side} px), one thread",
          timed({"numpy.partition (_quantiles)": prepare(_quantiles),
                 "torch.kthvalue, twice per quantile": prepare(lambda f, _qs: by_kthvalue(f))}, args.seconds))


if __name__ == "__main__":
    main()
