"""The lesion-insertion dataset: simulated nodules in real and generated chest radiographs.

Real chest radiographs with many annotated nodules cannot be had here, so ``cxr-nodule`` learns from
nodules *inserted* into real backgrounds (read through the serving chain) and into generated
("phantom") chests. Two insertion models that differ in profile, contrast and edge:

- **model A** (training): an elliptical projected sphere ``(1 - rho^2)^(p/2)`` with a smooth
  logistic edge, added to the display values with an absolute contrast; rendered on the model grid.
- **model B** (test only): a lobulated outline (radius modulated by harmonics 2-5), a flat-topped
  ``1 - rho^4`` profile with an error-function edge and a little internal texture, inserted as an
  attenuation (``d' = 1 - (1 - d) exp(-mu t)``: less contrast over dense areas), at the *source*
  resolution of the picture before the serving chain crops and resizes it.

Every picture is float32 (rows, cols) in [0, 1], bright bone (MONOCHROME2 convention), as
:func:`secondreader.preprocessing.window_frame` returns. Nodules are placed inside a lung mask
(:func:`lung_mask`, a heuristic on real pictures; known for generated ones).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize
from scipy import ndimage
from scipy.special import erfc
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops

__all__ = [
    "Nodule",
    "RealBackground",
    "density_gain",
    "discs",
    "generated_chest",
    "insert_distractors",
    "insert_model_a",
    "insert_model_b",
    "insert_vessel_mimics",
    "load_background",
    "lung_mask",
    "place_nodules",
    "square_picture",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Nodule:
    """One inserted nodule: centre ``(row, col)`` and mean ``radius`` in pixels of the picture it
    went into, its peak display contrast, and the insertion model (``"A"`` or ``"B"``)."""

    row: float
    col: float
    radius: float
    contrast: float
    model: str

    def __post_init__(self) -> None:
        if self.radius <= 0:
            raise ValueError(f"nodule radius must be positive, not {self.radius}")
        if self.model not in ("A", "B"):
            raise ValueError(f"insertion model must be 'A' or 'B', not {self.model!r}")

    def scaled(self, row0: float, col0: float, scale: float) -> Nodule:
        """The same nodule on another grid: ``(row - row0) * scale`` (pixel centres kept)."""
        return Nodule((self.row - row0 + 0.5) * scale - 0.5, (self.col - col0 + 0.5) * scale - 0.5,
                      self.radius * scale, self.contrast, self.model)


@dataclass(frozen=True, slots=True)
class RealBackground:
    """A real chest radiograph used as a background: ``picture`` float32 (rows, cols) in [0, 1];
    ``unknown`` bool (rows, cols) where a real opacity's label is unknown, or None."""

    id: str
    picture: np.ndarray
    real_lesions: bool = False
    unknown: np.ndarray | None = None


def discs(shape: tuple[int, int], regions: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """bool ``shape``: discs ``(row, col, radius)`` given as fractions of the rows, columns and width."""
    rows, cols = shape
    r, c = np.mgrid[0:rows, 0:cols]
    out = np.zeros(shape, dtype=bool)
    for row, col, radius in regions:
        out |= (r - row * rows) ** 2 + (c - col * cols) ** 2 <= (radius * cols) ** 2
    return out


# -- reading real backgrounds ---------------------------------------------------------------------

def load_background(path: Path, *, window: str = "serving", flip_rows: bool = False,
                    invert: bool = False) -> np.ndarray:
    """A real chest radiograph (DICOM or PNG) as a picture in [0, 1], bright bone.

    DICOM goes through the serving chain (header read, decode, Modality LUT, VOI or percentile
    window, MONOCHROME1 inversion) unless ``window="percentile"``: then the stored values, rescaled,
    get the serving chain's 0.5-99.5 percentile window (for a file whose header window does not fit
    its pixels). ``invert`` and ``flip_rows`` correct a file whose photometric interpretation or
    row order is wrong (recorded per background in the training config).

    Raises
    ------
    FileNotFoundError
        When the file is missing.
    ValueError
        When the file cannot be read as an image.
    """
    if not path.is_file():
        raise FileNotFoundError(f"background image not found: {path}")
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as img:
            picture = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        if invert:
            picture = 1.0 - picture
    elif window == "percentile":
        import pydicom

        from ..preprocessing import window_frame

        ds = pydicom.dcmread(path)
        raw = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1)
        raw += float(ds.get("RescaleIntercept", 0) or 0)
        picture = window_frame(raw, windowed=False, invert=invert)
    else:
        from ..dicom.io import InputFile
        from ..errors import SecondReaderError
        from ..pipeline import display_frames, parse_input

        parsed = parse_input(InputFile(path.name, path, size=path.stat().st_size))
        if parsed.instance is None:
            raise ValueError(f"background {path.name} is not readable DICOM: {parsed.error}")
        try:
            picture = display_frames(parsed, max_pixels=64_000_000)[0]
        except SecondReaderError as exc:
            raise ValueError(f"background {path.name} cannot be decoded: {exc}") from None
        if invert:
            picture = 1.0 - picture
    if flip_rows:
        picture = picture[::-1]
    return np.ascontiguousarray(picture, dtype=np.float32)


def square_picture(picture: np.ndarray, side: int) -> np.ndarray:
    """The serving chain's centre square crop and area resize (steps 3-4) to ``side``: float32."""
    rows, cols = picture.shape
    s = min(rows, cols)
    r0, c0 = (rows - s) // 2, (cols - s) // 2
    crop = torch.as_tensor(np.ascontiguousarray(picture[r0:r0 + s, c0:c0 + s]), dtype=torch.float32)[None]
    out = Resize(spatial_size=(side, side), mode="area")(crop)
    return np.asarray(getattr(out, "as_tensor", lambda: out)()[0].numpy(), dtype=np.float32)


def shrink(picture: np.ndarray, max_side: int) -> np.ndarray:
    """Area-reduce ``picture`` so that its longer side is at most ``max_side`` (aspect kept)."""
    rows, cols = picture.shape
    scale = max_side / max(rows, cols)
    if scale >= 1:
        return picture
    size = (max(8, round(rows * scale)), max(8, round(cols * scale)))
    out = Resize(spatial_size=size, mode="area")(torch.as_tensor(np.ascontiguousarray(picture))[None])
    return np.asarray(getattr(out, "as_tensor", lambda: out)()[0].numpy(), dtype=np.float32)


# -- where the lungs are ----------------------------------------------------------------------------

def lung_mask(picture: np.ndarray) -> np.ndarray:
    """A heuristic lung mask of a frontal chest picture (float (rows, cols), bright bone): bool.

    Each lung is the largest dark component on its side of the picture that does not touch the
    border (the air around the body does), is 2.5-22% of the picture, and lies where lungs lie
    (centroid 20-75% down, 10-40% of the width off the midline). The picture is smoothed and
    thresholded at Otsu's level of its central part, then at lower and higher levels until both
    sides have one. A side that never qualifies gets the other side's mirror image; when neither
    does, two template ellipses at the usual lung positions are returned (placement never fails).
    """
    rows, cols = picture.shape
    smooth = ndimage.gaussian_filter(picture.astype(np.float32), sigma=max(1.0, rows / 128))
    level = threshold_otsu(smooth[int(0.1 * rows):int(0.9 * rows), int(0.1 * cols):int(0.9 * cols)])
    found: dict[str, np.ndarray] = {}
    for factor in (1.1, 1.05, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7):
        dark = ndimage.binary_opening(smooth < level * factor, np.ones((3, 3)), iterations=max(1, rows // 64))
        labels = label(dark, connectivity=1)
        for props in sorted(regionprops(labels), key=lambda p: -p.area):
            cy, cx = props.centroid
            r0, c0, r1, c1 = props.bbox
            half = "left" if cx < cols / 2 else "right"
            if half in found or not 0.025 * picture.size <= props.area <= 0.22 * picture.size:
                continue
            if r0 == 0 or c0 == 0 or r1 == rows or c1 == cols or not 0.2 * rows < cy < 0.75 * rows:
                continue
            if not 0.1 < abs(cx / cols - 0.5) < 0.4:
                continue
            found[half] = np.asarray(ndimage.binary_fill_holes(labels == props.label))
        if len(found) == 2:
            break
    if len(found) == 1:
        (only,) = found.values()
        found["mirror"] = only[:, ::-1]
    if not found:
        r, c = np.mgrid[0:rows, 0:cols]
        rr, cc = (r / rows - 0.45) / 0.3, (np.abs(c / cols - 0.5) - 0.2) / 0.12
        return np.asarray(rr**2 + cc**2 <= 1.0)
    mask = np.zeros(picture.shape, dtype=bool)
    for part in found.values():
        mask |= part
    return mask


# -- generated backgrounds --------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return np.asarray(noise / (noise.std() + 1e-6), dtype=np.float32)


def _pow(x: np.ndarray, n: int) -> np.ndarray:
    out = x
    for _ in range(n - 1):
        out = out * x
    return out


def generated_chest(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A procedural frontal chest (float32 (side, side) in [0, 1], bright bone) and its lung mask.

    Torso, two lungs with diaphragm domes, mediastinum and heart, spine, posterior ribs and
    clavicles (drawn at half resolution and enlarged: they are smooth), lung markings (smoothed
    noise and vessel-like ridges stronger near the hila), a smooth exposure gradient and noise at
    full resolution; every shape and grey level is drawn from ``rng``.
    """
    half = max(32, side // 2)
    r, c = np.mgrid[0:half, 0:half].astype(np.float32) / half
    u = rng.uniform
    cx = 0.5 + u(-0.03, 0.03)
    body = np.exp(-(_pow((c - cx) / u(0.40, 0.48), 6) + _pow((r - 0.55) / 0.62, 6)))
    img = 0.06 + u(0.45, 0.6) * body
    inside_lungs = np.zeros(img.shape, dtype=bool)
    top, bottom = u(0.10, 0.18), u(0.70, 0.82)
    for sign in (-1.0, 1.0):
        lx = cx + sign * u(0.17, 0.22)
        width = u(0.13, 0.17) * (0.9 if sign > 0 else 1.0)
        t = np.clip((r - top) / (bottom - top), 0.0, 1.0)
        reach = width * t ** 0.3  # narrow apex, wide base
        dome = bottom - u(0.04, 0.08) * (1 - ((c - lx) / (width + 1e-3)) ** 2)
        inside_lungs |= (np.abs(c - lx) < reach) & (r > top) & (r < dome)
    lungs = ndimage.gaussian_filter(inside_lungs.astype(np.float32), half / 90)
    img -= u(0.25, 0.35) * lungs
    heart = ((c - cx - u(0.05, 0.09)) / u(0.12, 0.16)) ** 2 + ((r - u(0.58, 0.64)) / u(0.12, 0.16)) ** 2 < 1
    img += u(0.15, 0.25) * ndimage.gaussian_filter(heart.astype(np.float32), half / 100) * lungs
    img += u(0.08, 0.14) * np.exp(-_pow((c - cx) / 0.06, 4)) * body
    spine = np.exp(-_pow((c - cx) / 0.03, 6)) * (0.7 + 0.3 * np.cos(r * np.pi * u(22, 28)) ** 2)
    img += u(0.06, 0.12) * spine * body
    ribs = np.zeros_like(img)
    spacing = u(0.065, 0.08)
    for sign in (-1.0, 1.0):
        x = np.clip(sign * (c - cx), 0.0, None)
        lateral = (x > 0.02) & (x < 0.42)
        slope, bend = u(0.35, 0.5) * x * np.sqrt(x), 0.15 * x * x
        for k in range(11):
            width = u(0.018, 0.026)
            d = np.abs(r - (top - 0.04 + k * spacing + slope + bend)) / width
            near = d < 2.0
            band = np.exp(-_pow(d, 6)) * (1.0 + 0.6 * np.exp(-(((d - 0.9) / 0.15) ** 2)))
            ribs += np.where(near & lateral, band, 0.0)
    img += u(0.06, 0.11) * ribs * body
    for sign in (-1.0, 1.0):
        x = np.clip(sign * (c - cx), 0.0, None)
        clavicle = np.exp(-_pow((r - (top + 0.02) + 0.12 * x) / 0.018, 4)) * (x > 0.02) * (x < 0.3)
        img += u(0.08, 0.14) * clavicle
    hilum = np.exp(-(((np.abs(c - cx) - 0.1) / 0.18) ** 2 + ((r - 0.5) / 0.25) ** 2))
    img += u(-0.05, 0.05) * (r - 0.5) + u(-0.04, 0.04) * (c - 0.5)
    zoom = side / half
    img = ndimage.zoom(img, zoom, order=1)[:side, :side]
    lungs = ndimage.zoom(lungs, zoom, order=1)[:side, :side]
    hilum = ndimage.zoom(hilum, zoom, order=1)[:side, :side]
    inside_lungs = ndimage.zoom(inside_lungs.astype(np.float32), zoom, order=0)[:side, :side] > 0.5
    # lung markings at full resolution: smoothed noise plus vessel-like ridges, stronger at the hila
    texture = 0.6 * _smooth_noise(rng, img.shape, side / 200) + 0.4 * _smooth_noise(rng, img.shape, side / 60)
    vessels = np.exp(-((_smooth_noise(rng, img.shape, side / 80) / 0.12) ** 2))
    img += lungs * (u(0.01, 0.02) * texture + u(0.03, 0.07) * vessels * (0.3 + hilum))
    img = np.clip(img, 0.0, 1.0) ** u(0.8, 1.25)
    img += u(0.003, 0.012) * rng.standard_normal(img.shape).astype(np.float32)
    inner = ndimage.binary_erosion(inside_lungs, iterations=max(1, side // 128))
    return np.clip(img, 0.0, 1.0).astype(np.float32), inner


# -- nodule placement and insertion -----------------------------------------------------------------

def place_nodules(rng: np.random.Generator, mask: np.ndarray, count: int, *, diameter_fraction: tuple[float, float],
                  log_uniform: bool = False) -> list[tuple[float, float, float]]:
    """Up to ``count`` ``(row, col, radius)`` centres inside ``mask`` (bool (rows, cols)), radius
    drawn from ``diameter_fraction`` x the picture side, kept apart from each other."""
    side = min(mask.shape)
    placed: list[tuple[float, float, float]] = []
    lo, hi = diameter_fraction
    for _ in range(count):
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if log_uniform else float(rng.uniform(lo, hi))
        radius = 0.5 * d * side
        inner = ndimage.binary_erosion(mask, iterations=max(1, int(radius * 0.5)))
        rows, cols = np.nonzero(inner if inner.any() else mask)
        if rows.size == 0:
            break
        for _attempt in range(20):
            k = int(rng.integers(rows.size))
            y, x = rows[k] + rng.uniform(-0.5, 0.5), cols[k] + rng.uniform(-0.5, 0.5)
            if all(np.hypot(y - py, x - px) > radius + pr + 3 for py, px, pr in placed):
                placed.append((float(y), float(x), radius))
                break
    return placed


def _patch_grid(shape: tuple[int, int], row: float, col: float, reach: float,
                supersample: int) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Slices of the patch around ``(row, col)`` and its subpixel offsets (dy, dx) from the centre,
    float64 (h*s, w*s)."""
    r0, r1 = max(0, int(np.floor(row - reach))), min(shape[0], int(np.ceil(row + reach)) + 1)
    c0, c1 = max(0, int(np.floor(col - reach))), min(shape[1], int(np.ceil(col + reach)) + 1)
    s = supersample
    sub = (np.arange(s) + 0.5) / s - 0.5
    ys = (np.arange(r0, r1)[:, None] + sub[None, :]).ravel()
    xs = (np.arange(c0, c1)[:, None] + sub[None, :]).ravel()
    dy, dx = np.meshgrid(ys - row, xs - col, indexing="ij")
    return slice(r0, r1), slice(c0, c1), dy, dx


def _downsample(values: np.ndarray, s: int) -> np.ndarray:
    h, w = values.shape[0] // s, values.shape[1] // s
    return np.asarray(values.reshape(h, s, w, s).mean(axis=(1, 3)))


def insert_model_a(picture: np.ndarray, rng: np.random.Generator, row: float, col: float, radius: float, *,
                   contrast: tuple[float, float] = (0.03, 0.16)) -> tuple[Nodule, np.ndarray]:
    """Model A (training): an elliptical projected sphere ``(1 - rho^2)^(p/2)``, ``p`` in [0.6, 2],
    aspect 0.7-1, logistic edge of random width, *added* to the display values with an absolute
    contrast drawn from ``contrast``. ``picture`` is changed in place.

    Returns the nodule and its footprint (bool, same shape as ``picture``: ``rho <= 1``).
    """
    aspect, angle = rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
    power, edge = rng.uniform(0.6, 2.0), rng.uniform(0.02, 0.2)
    amplitude = float(rng.uniform(*contrast))
    rs, cs, dy, dx = _patch_grid(picture.shape, row, col, radius * 1.6 + 2, 4)
    ca, sa = np.cos(angle), np.sin(angle)
    a, b = radius / np.sqrt(aspect), radius * np.sqrt(aspect)
    rho = np.sqrt(((dy * ca + dx * sa) / a) ** 2 + ((-dy * sa + dx * ca) / b) ** 2)
    thickness = np.clip(1 - rho**2, 0, None) ** (power / 2)
    soft = 1.0 / (1.0 + np.exp(np.clip((rho - 1.0) / max(edge, 1e-3), -50, 50)))
    profile = _downsample(np.maximum(thickness, 0.25 * soft * (rho < 1.6)), 4)
    picture[rs, cs] = np.clip(picture[rs, cs] + amplitude * profile, 0.0, 1.0)
    footprint = np.zeros(picture.shape, dtype=bool)
    footprint[rs, cs] = _downsample((rho <= 1.0).astype(np.float32), 4) >= 0.5
    return Nodule(row, col, radius, amplitude, "A"), footprint


def insert_model_b(picture: np.ndarray, rng: np.random.Generator, row: float, col: float, radius: float, *,
                   attenuation: tuple[float, float] = (0.06, 0.3)) -> Nodule:
    """Model B (test only): a lobulated outline ``R (1 + sum_k a_k cos(k theta + phi_k))``, k = 2..5,
    a flat-topped ``1 - rho^4`` profile with an error-function edge and mild internal texture,
    inserted as an attenuation ``d' = 1 - (1 - d) exp(-mu t)`` (less contrast over bone and
    mediastinum than over lung). ``picture`` is changed in place; returns the nodule."""
    mu = float(rng.uniform(*attenuation))
    harmonics = [(k, rng.uniform(0, 0.12 / (k - 1) ** 0.5), rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]
    edge_width = rng.uniform(0.05, 0.3) * radius
    rs, cs, dy, dx = _patch_grid(picture.shape, row, col, radius * 1.8 + 3, 3)
    theta = np.arctan2(dy, dx)
    outline = radius * (1 + sum(a * np.cos(k * theta + phi) for k, a, phi in harmonics))
    dist = np.hypot(dy, dx)
    rho = dist / outline
    core = np.clip(1 - np.minimum(rho, 1.0) ** 4, 0, None)
    edge = 0.5 * erfc((dist - outline) / (edge_width * np.sqrt(2)))
    thickness = _downsample(np.maximum(core, 0.35) * edge, 3)
    texture = 1 + 0.08 * ndimage.gaussian_filter(rng.standard_normal(thickness.shape), max(0.6, radius / 6))
    t = np.clip(thickness * texture, 0, None)
    before = picture[rs, cs].copy()
    after = 1.0 - (1.0 - before) * np.exp(-mu * t)
    picture[rs, cs] = after
    contrast = float((after - before).max()) if after.size else 0.0
    return Nodule(row, col, radius, contrast, "B")


def insert_distractors(picture: np.ndarray, rng: np.random.Generator, count: int) -> int:
    """Non-nodules that radiographs are full of, drawn as negatives (``picture`` changed in place):
    wires and lines (curved, 1-2 px, sharp), surgical clips (small bright rectangles), and ECG
    electrodes (thin rings). Sharp-edged and mostly brighter than a nodule; returns how many."""
    rows, cols = picture.shape
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float32)
    for _ in range(count):
        kind = rng.integers(3)
        y0, x0 = rng.uniform(0.1, 0.9) * rows, rng.uniform(0.1, 0.9) * cols
        if kind == 0:  # a wire: a gentle arc through (y0, x0)
            angle, bend = rng.uniform(0, np.pi), rng.uniform(-0.004, 0.004)
            along = (r - y0) * np.cos(angle) + (c - x0) * np.sin(angle)
            across = -(r - y0) * np.sin(angle) + (c - x0) * np.cos(angle) - bend * along**2
            length = rng.uniform(0.15, 0.6) * rows
            shape = (np.abs(across) < rng.uniform(0.5, 1.2)) & (np.abs(along) < length / 2)
            amplitude = rng.uniform(0.15, 0.5)
        elif kind == 1:  # a clip: a small rotated rectangle
            angle = rng.uniform(0, np.pi)
            along = (r - y0) * np.cos(angle) + (c - x0) * np.sin(angle)
            across = -(r - y0) * np.sin(angle) + (c - x0) * np.cos(angle)
            shape = (np.abs(along) < rng.uniform(2, 5)) & (np.abs(across) < rng.uniform(0.7, 1.8))
            amplitude = rng.uniform(0.3, 0.7)
        else:  # an electrode: a thin ring, sometimes with a bright centre
            d = np.hypot(r - y0, c - x0)
            radius = rng.uniform(3, 8)
            shape = (np.abs(d - radius) < rng.uniform(0.5, 1.0)) | ((d < 1.5) & (rng.random() < 0.5))
            amplitude = rng.uniform(0.15, 0.4)
        soft = ndimage.gaussian_filter(shape.astype(np.float32), rng.uniform(0.3, 0.7))
        picture += amplitude * soft
        np.clip(picture, 0.0, 1.0, out=picture)
    return count


def _capsule_distance(r: np.ndarray, c: np.ndarray, a: tuple[float, float], b: tuple[float, float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each grid point from the segment ``a``-``b`` and where along it (0-1) it is nearest."""
    (ay, ax), (by, bx) = a, b
    dy, dx = by - ay, bx - ax
    t = np.clip(((r - ay) * dy + (c - ax) * dx) / max(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
    return np.hypot(r - ay - t * dy, c - ax - t * dx), t


def insert_vessel_mimics(picture: np.ndarray, rng: np.random.Generator, mask: np.ndarray, count: int) -> int:
    """Nodule mimics made of the lungs' own vessels, drawn as negatives (``picture`` changed in place).

    Each is a branching vessel tree growing out from the hilar (medial) part of a lung in ``mask``
    (bool, the picture's shape): two or three generations of tapering branches seen side-on (a
    cylinder's projected profile, ``sqrt(1 - (d / r)^2)``), and beside them one to three vessels seen
    end-on, small dense round dots of the branch's calibre (a flat disc with a soft edge: the whole
    length of the vessel lies along the beam, so it is denser than the tube beside it). Trunks are
    2.5-7 mm across on a 35 cm film, each branch 0.65-0.8 of its parent's calibre; the trunks start
    among the 35% of lung pixels nearest the midline; the density is that of a faint nodule; the
    tree fades at the lung's edge. An end-on vessel and a hilar vessel turning towards the beam are
    the classic look-alikes of a nodule on a chest radiograph. Returns how many trees were drawn."""
    rows, cols = picture.shape
    side = min(rows, cols)
    where = np.argwhere(mask)
    if count <= 0 or len(where) == 0:
        return 0
    off_midline = np.abs(where[:, 1] - cols / 2)
    hilar = where[off_midline <= np.quantile(off_midline, 0.35)]
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float32)
    density = np.zeros(picture.shape, np.float32)
    for _ in range(count):
        y0, x0 = (float(v) for v in hilar[rng.integers(len(hilar))])
        outward = 1.0 if x0 >= cols / 2 else -1.0
        heading = float(np.arctan2(rng.uniform(-1.0, 1.0), outward))
        calibre = rng.uniform(0.0035, 0.01) * side  # radius, px
        amplitude = rng.uniform(0.02, 0.07)
        branches = [((y0, x0), heading, rng.uniform(0.07, 0.15) * side, calibre)]
        segments: list[tuple[tuple[float, float], tuple[float, float], float]] = []
        for _generation in range(int(rng.integers(2, 4))):
            grown = []
            for (y, x), angle, length, radius in branches:
                end = (y + length * np.sin(angle), x + length * np.cos(angle))
                segments.append(((y, x), end, radius))
                for turn in (-1.0, 1.0):
                    grown.append((end, angle + turn * rng.uniform(0.3, 0.8), length * rng.uniform(0.6, 0.8),
                                  radius * rng.uniform(0.65, 0.8)))
            branches = grown
        for a, b, radius in segments:
            d, t = _capsule_distance(r, c, a, b)
            local = radius * (1.0 - 0.3 * t)  # tapering along the branch
            density = np.maximum(density, amplitude * np.sqrt(np.clip(1.0 - (d / local) ** 2, 0.0, 1.0)))
        for _dot in range(int(rng.integers(1, 4))):
            a, b, radius = segments[int(rng.integers(len(segments)))]
            along = float(rng.uniform(0.2, 1.0))
            across = float(np.arctan2(b[0] - a[0], b[1] - a[1]) + np.pi / 2 * rng.choice([-1.0, 1.0]))
            gap = radius * rng.uniform(2.5, 5.0)
            cy = a[0] + along * (b[0] - a[0]) + gap * np.sin(across)
            cx = a[1] + along * (b[1] - a[1]) + gap * np.cos(across)
            dot = np.clip(radius * rng.uniform(0.9, 1.3) - np.hypot(r - cy, c - cx) + 0.5, 0.0, 1.0)
            density = np.maximum(density, amplitude * rng.uniform(1.5, 2.5) * dot)
    fade = ndimage.gaussian_filter(mask.astype(np.float32), max(1.0, side / 128))
    picture += density * fade
    np.clip(picture, 0.0, 1.0, out=picture)
    return count


def footprints(shape: tuple[int, int], nodules: Sequence[Nodule]) -> np.ndarray:
    """Discs of the nodules' mean radii on a ``shape`` grid (bool), e.g. a target mask."""
    r, c = np.mgrid[0:shape[0], 0:shape[1]]
    out = np.zeros(shape, dtype=bool)
    for n in nodules:
        out |= (r - n.row) ** 2 + (c - n.col) ** 2 <= n.radius**2
    return out


def augment_geometry(picture: np.ndarray, mask: np.ndarray, rngs: list[np.random.Generator], side: int, *,
                     scale: tuple[float, float], rotate_deg: float, translate: float,
                     flip: bool = True, elastic: float = 0.0, supersample: int = 1,
                     chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random similarity transforms (scale, rotation, translation, left-right flip) of a square
    ``picture`` (float (n, n)) and its ``mask`` (bool (n, n), or (k, n, n) for k masks), one per
    generator in ``rngs``, onto ``side`` x ``side`` grids (edge values outside the picture, nothing
    outside the mask). With ``elastic`` > 0, each grid is also displaced by a smooth random field
    (cubic interpolation of a 5 x 5 lattice of shifts) whose largest shift along either axis is
    ``elastic`` x the side: ribs, vessels and lung outlines bend differently in every picture. The
    field is drawn from the picture's generator, so turning it on re-draws what comes after it
    (distractors, nodules); with ``elastic`` 0 nothing more is drawn.

    With ``supersample`` k > 1 each picture is sampled on a grid k times finer and area-averaged
    (k x k blocks) down to ``side``, as the serving chain area-reduces a radiograph: with a
    ``picture`` of ``side`` x k, the identity transform gives exactly the serving chain's area
    resize, and every picture has the sharpness of a served one. (Bilinear sampling straight onto
    ``side`` blurs: a 320-pixel picture sampled onto 256 had up to a fifth less fine detail than the
    served image of the same radiograph. Closing that gap did not make the model better held out;
    see training/README.md.) Masks are sampled
    on the fine grid too and kept where over half a block is inside. Pictures go ``chunk`` at a
    time (the fine grids are large); the result does not depend on ``chunk``.

    Returns float32 (len(rngs), side, side) pictures and bool masks (len(rngs), [k,] side, side).
    """
    thetas = []
    for rng in rngs:
        zoom = rng.uniform(*scale)
        angle = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
        shift = rng.uniform(-translate, translate, size=2) * 2  # normalised units (the side is 2)
        mirror = -1.0 if flip and rng.random() < 0.5 else 1.0
        ca, sa = np.cos(angle), np.sin(angle)
        # input = R^-1 (output - shift) / zoom, in (x, y) normalised coordinates; mirror flips x
        inv = np.array([[ca, sa], [-sa, ca]]) / zoom
        inv = inv @ np.diag([mirror, 1.0])
        thetas.append(np.concatenate([inv, -(inv @ shift)[:, None]], axis=1))
    theta = torch.as_tensor(np.stack(thetas), dtype=torch.float32)
    fine = side * supersample
    stacked = np.asarray(mask).reshape((-1,) + picture.shape)
    src = torch.as_tensor(np.ascontiguousarray(picture), dtype=torch.float32)[None, None]
    msk = torch.as_tensor(np.ascontiguousarray(stacked), dtype=torch.float32)[None]
    pictures, masks = [], []
    for start in range(0, len(rngs), chunk):
        part = theta[start:start + chunk]
        n = part.shape[0]
        grid = torch.nn.functional.affine_grid(part, [n, 1, fine, fine], align_corners=False)
        if elastic > 0:
            grid = grid + _displacements(rngs[start:start + chunk], fine, elastic)
        out = torch.nn.functional.grid_sample(src.expand(n, 1, -1, -1), grid, mode="bilinear",
                                              padding_mode="border", align_corners=False)
        out_mask = torch.nn.functional.grid_sample(msk.expand(n, -1, -1, -1), grid, mode="nearest",
                                                   padding_mode="zeros", align_corners=False)
        if supersample > 1:
            out = torch.nn.functional.avg_pool2d(out, supersample)
            out_mask = torch.nn.functional.avg_pool2d(out_mask, supersample)
        pictures.append(out[:, 0].numpy().astype(np.float32))
        masks.append(out_mask.numpy() > 0.5)
    picked = np.concatenate(pictures)
    chosen = np.concatenate(masks)
    return picked, chosen[:, 0] if np.asarray(mask).ndim == 2 else chosen


def _displacements(rngs: Sequence[np.random.Generator], side: int, largest: float) -> torch.Tensor:
    """Smooth random displacement fields (len(rngs), side, side, 2) in grid units (the side is 2),
    each scaled so that its largest component (row or column shift) is ``largest`` x the side."""
    lattice = torch.as_tensor(np.stack([rng.standard_normal((2, 5, 5)) for rng in rngs]), dtype=torch.float32)
    fields = torch.nn.functional.interpolate(lattice, size=(side, side), mode="bicubic", align_corners=True)
    peak = fields.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (fields / peak * (2 * largest)).permute(0, 2, 3, 1)


def density_gain(picture: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """``picture`` (float32 (n, n) in [0, 1]) times a smooth random gain between ``1 - strength``
    and ``1 + strength`` (cubic interpolation of a 4 x 4 lattice): the anatomy's density varies
    from picture to picture, as it does between patients and exposures."""
    lattice = torch.as_tensor(rng.uniform(-1.0, 1.0, (1, 1, 4, 4)), dtype=torch.float32)
    field = torch.nn.functional.interpolate(lattice, size=picture.shape, mode="bicubic", align_corners=True)
    gain = 1.0 + strength * field[0, 0].clamp(-1.0, 1.0).numpy()
    return np.clip(picture * gain, 0.0, 1.0).astype(np.float32)
