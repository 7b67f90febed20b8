"""PNG overlays for people: the radiograph with the heatmap blended in and regions outlined.

Every overlay carries the banner "AI result — second reader — not for primary diagnosis", so a
screenshot of it cannot pass for the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import OutputEncodingError
from ..explain.regions import Region
from ..fileio import atomic_path

__all__ = ["BANNER", "LAYER_MAX_SIDE", "absolute_heat", "heat_colormap", "render_layer", "render_overlay",
           "write_png"]

BANNER = "AI result — second reader — not for primary diagnosis"
MAX_SIDE = 1024
# The heat comes from a low-resolution model input (28 px for cxr-pneumonia): 512 px a side keep
# all its detail at a third of the cost of 1024 (2k CR: about 35 ms instead of 100 ms here).
LAYER_MAX_SIDE = 512

# Control points of a perceptually ordered black-red-yellow-white map (like 'inferno').
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


def _lut() -> np.ndarray:
    levels = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(levels, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1).astype(np.uint8)


_LUT = _lut()


def heat_colormap(heat: np.ndarray) -> np.ndarray:
    """float (H, W) in [0, 1] → uint8 RGB (H, W, 3), through a 256-entry table."""
    index = (np.clip(heat, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    rgb: np.ndarray = _LUT[index]
    return rgb


#: The absolute scale of :func:`absolute_heat`: heat at this fraction of a finding's operating point
#: starts to show, and is fully opaque from the operating point up; the colour bar spans
#: [ABSOLUTE_LOW, ABSOLUTE_HIGH] times the operating point, so "high" means well over it.
ABSOLUTE_LOW, ABSOLUTE_HIGH = 0.5, 1.5


def absolute_heat(heats: Sequence[tuple[np.ndarray, float, float]]) -> np.ndarray:
    """Heat on an absolute scale tied to each finding's operating point, for pictures a
    radiologist reads at a glance (the Secondary Capture).

    ``heats``: per finding, ``(heat, probability, operating_point)`` with ``heat`` (rows, cols)
    its relative saliency. Each pixel's level is ``saliency / max(saliency) * probability /
    operating_point`` (capped at ``ABSOLUTE_HIGH``): a negative finding (probability under its
    point) never reaches the opaque range, so a negative study looks negative, while relative
    saliency (:func:`render_overlay`'s default) would paint every study's hottest spot "high".
    Returns the level mapped to [0, 1] over [ABSOLUTE_LOW, ABSOLUTE_HIGH] (0 below), the maximum
    over findings; zeros when there is none.
    """
    out: np.ndarray | None = None
    for heat, probability, operating_point in heats:
        top = float(heat.max()) if heat.size else 0.0
        if top <= 0 or operating_point <= 0:
            level = np.zeros(heat.shape, dtype=np.float32)
        else:
            ratio = min(probability / operating_point, ABSOLUTE_HIGH)
            level = np.clip(heat / top * ratio, 0.0, ABSOLUTE_HIGH).astype(np.float32)
        out = level if out is None else np.maximum(out, level)
    if out is None:
        raise ValueError("absolute_heat needs at least one heatmap")
    scaled: np.ndarray = np.clip((out - ABSOLUTE_LOW) / (ABSOLUTE_HIGH - ABSOLUTE_LOW), 0.0, 1.0)
    return scaled


def render_overlay(display: np.ndarray, heat: np.ndarray, regions: Sequence[Region], *, title: str,
                   absolute: bool = False) -> Image.Image:
    """``display``: float32 (rows, cols) in [0, 1], bright bone; ``heat`` the same shape in [0, 1].

    Returns an RGB image at most ``MAX_SIDE`` pixels a side, with the banner and region boxes.
    ``absolute``: ``heat`` comes from :func:`absolute_heat` (0.5 is a finding's operating point):
    colour shows from 0 and is opaque from 0.5, and the legend marks the operating point.
    """
    if display.shape != heat.shape:
        raise ValueError(f"display {display.shape} and heat {heat.shape} must have the same shape")
    rows, cols = display.shape
    scale = min(1.0, MAX_SIDE / max(rows, cols))
    size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    grey8 = Image.fromarray((np.clip(display, 0, 1) * 255).astype(np.uint8), mode="L")
    heat_img = Image.fromarray(np.clip(heat, 0, 1).astype(np.float32), mode="F")
    if scale < 1.0:
        # Pillow's box/bilinear reductions are antialiased and far cheaper than resampling floats.
        grey8 = grey8.resize((size[1], size[0]), Image.Resampling.BOX)
        heat_img = heat_img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    grey = np.repeat(np.asarray(grey8, dtype=np.float32)[..., None], 3, axis=-1)
    heat = np.asarray(heat_img, dtype=np.float32)
    alpha = (_absolute_alpha(heat) if absolute else _alpha(heat))[..., None] * 0.55
    rgb = (grey * (1 - alpha) + heat_colormap(heat).astype(np.float32) * alpha).astype(np.uint8)
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    for region in regions:
        r0, c0, r1, c1 = (v * scale for v in region.bbox)
        draw.rectangle([c0, r0, c1 - 1, r1 - 1], outline=(0, 255, 255), width=max(1, round(3 * size[0] / 1024)))
    banner_h = 16
    draw.rectangle([0, 0, size[1], banner_h], fill=(0, 0, 0))
    # The bundled bitmap font has no em dash: the burned-in text uses hyphens.
    draw.text((4, 2), f"{BANNER.replace(chr(0x2014), '-')} | {title}", fill=(255, 255, 0), font=_FONT)
    _legend(image, draw, absolute=absolute)
    return image


_FONT = ImageFont.load_default()


def _alpha(heat: np.ndarray) -> np.ndarray:
    """Opacity of the heat colour: none below 0.2, full from 0.8 (float, same shape as ``heat``)."""
    alpha: np.ndarray = np.clip((heat - 0.2) / 0.6, 0.0, 1.0)
    return alpha


def _absolute_alpha(heat: np.ndarray) -> np.ndarray:
    """Opacity on the absolute scale: none at 0 (half the operating point), full from 0.5 (the
    operating point)."""
    alpha: np.ndarray = np.clip(heat / 0.5, 0.0, 1.0)
    return alpha


def render_layer(heat: np.ndarray) -> Image.Image:
    """The heatmap alone as a transparent colour layer, for viewers that blend it themselves.

    ``heat``: float (rows, cols) in [0, 1] on the source pixel grid. Returns an RGBA image covering
    exactly that grid, area-averaged uniformly to at most ``LAYER_MAX_SIDE`` pixels a side (a viewer stretches
    it over the image's full rows x columns, so pixel (r, c) of the source maps to
    (r * h / rows, c * w / cols) of the layer). Colour from :func:`heat_colormap`, alpha rising
    from 0 (heat 0.2 and below) to 255 (heat 0.8 and above); the viewer's opacity slider scales it.
    """
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heat must be a non-empty 2-D array, got shape {heat.shape}")
    rows, cols = heat.shape
    scale = min(1.0, LAYER_MAX_SIDE / max(rows, cols))
    heat_img = Image.fromarray(np.clip(heat, 0, 1).astype(np.float32), mode="F")
    if scale < 1.0:
        heat_img = heat_img.resize((max(1, round(cols * scale)), max(1, round(rows * scale))),
                                   Image.Resampling.BOX)
    small = np.asarray(heat_img, dtype=np.float32)
    rgba = np.empty(small.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = heat_colormap(small)
    rgba[..., 3] = (_alpha(small) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(rgba, mode="RGBA")


def _legend(image: Image.Image, draw: ImageDraw.ImageDraw, *, absolute: bool = False) -> None:
    """A colour bar (bottom right): low to high saliency, or on the absolute scale half the
    operating point, the operating point (the middle) and 1.5 times it."""
    width, height = image.size
    bar_w, bar_h = max(40, width // 6), 10
    x0, y0 = width - bar_w - 8, height - bar_h - 20
    if x0 < 0 or y0 < 0:
        return
    ramp = heat_colormap(np.linspace(0.0, 1.0, bar_w)[None, :].repeat(bar_h, axis=0))
    image.paste(Image.fromarray(ramp, mode="RGB"), (x0, y0))
    draw.rectangle([x0 - 1, y0 - 1, x0 + bar_w, y0 + bar_h], outline=(255, 255, 255))
    if absolute:
        middle = x0 + bar_w // 2
        draw.line([middle, y0 - 3, middle, y0 + bar_h + 2], fill=(255, 255, 255))
        draw.text((x0, y0 + bar_h + 1), "neg", fill=(255, 255, 255))
        draw.text((middle - 6, y0 + bar_h + 1), "op", fill=(255, 255, 255))
        draw.text((x0 + bar_w - 18, y0 + bar_h + 1), "pos", fill=(255, 255, 255))
        return
    draw.text((x0, y0 + bar_h + 1), "low", fill=(255, 255, 255))
    draw.text((x0 + bar_w - 24, y0 + bar_h + 1), "high", fill=(255, 255, 255))


def write_png(image: Image.Image, path: Path) -> None:
    try:
        # unique per writer: two jobs screening the same study write the same files at once
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", compress_level=1)
    except OSError as exc:
        raise OutputEncodingError(f"could not write overlay PNG ({exc.strerror or type(exc).__name__})") from None
