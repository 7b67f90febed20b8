"""Reliability diagram (calibration) as a PNG, drawn with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["reliability_png"]

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]


def reliability_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], *, bins: int = 10,
                    size: int = 480) -> None:
    """Observed frequency against mean predicted probability per bin, one line per split."""
    margin = 48
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    inner = size - 2 * margin

    def xy(p: float, f: float) -> tuple[float, float]:
        return margin + p * inner, size - margin - f * inner

    draw.rectangle([margin, margin, size - margin, size - margin], outline=(0, 0, 0))
    draw.line([xy(0, 0), xy(1, 1)], fill=(160, 160, 160), width=1)
    for t in np.linspace(0, 1, 6):
        draw.text((xy(t, 0)[0] - 8, size - margin + 6), f"{t:.1f}", fill=(0, 0, 0))
        draw.text((8, xy(0, t)[1] - 6), f"{t:.1f}", fill=(0, 0, 0))
    draw.text((margin, 12), "Reliability: observed frequency vs predicted probability", fill=(0, 0, 0))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for k, (name, (p, y)) in enumerate(curves.items()):
        p = np.asarray(p, dtype=float).ravel()
        y = np.asarray(y, dtype=float).ravel()
        which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        points = [xy(float(p[which == b].mean()), float(y[which == b].mean()))
                  for b in range(bins) if (which == b).any()]
        colour = _COLOURS[k % len(_COLOURS)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((margin + 8, margin + 8 + 14 * k), name, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
