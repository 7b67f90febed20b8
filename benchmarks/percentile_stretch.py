"""Speed of the percentile stretch's quantiles in a cxr-nodule training batch (16 pictures of
256 x 256, the 0.5th and 99.5th percentiles of each): ``secondreader.training.localisation._quantiles``
(one ``numpy.partition`` per row) against two ``torch.kthvalue`` calls per quantile (what it
replaced; the same values bit for bit) and ``torch.quantile`` (which sorts every row), alternating
in rounds in one run so that a loaded machine slows all alike.

    python benchmarks/percentile_stretch.py [--seconds 6] [--batch 16] [--side 256]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

from secondreader.training.localisation import _quantiles

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a fit prepares its batches
    flat = torch.rand(args.batch, args.side * args.side, generator=torch.Generator().manual_seed(0)) ** 2
    ways: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
        "numpy.partition (_quantiles)": lambda f: _quantiles(f, QS),
        "torch.kthvalue, twice per quantile": by_kthvalue,
        "torch.quantile": lambda f: [torch.quantile(f, q, dim=1) for q in QS],
    }
    reference = by_kthvalue(flat)
    assert all(torch.equal(a, b) for a, b in zip(_quantiles(flat, QS), reference, strict=True))
    counts, spent = dict.fromkeys(ways, 0), dict.fromkeys(ways, 0.0)
    for _ in range(5):
        for name, way in ways.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds / 5 / len(ways):
                way(flat)
                counts[name] += 1
            spent[name] += time.perf_counter() - t0
    ms = {name: 1000 * spent[name] / counts[name] for name in ways}
    first = next(iter(ms.values()))
    print(f"percentile stretch quantiles, batch {args.batch} x {args.side} x {args.side}, one thread")
    print("| quantiles by | ms per batch | vs _quantiles |\n|---|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {value / first:.1f}x |")


if __name__ == "__main__":
    main()
