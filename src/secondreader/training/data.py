"""Training data sources: a MedMNIST ``.npz`` (PneumoniaMNIST) and manifests of DICOM files (CSV or
JSON; the worklist's export of radiologists' verdicts is one)."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..dicom.io import InputFile, iter_inputs

__all__ = ["BOX_COLUMNS", "Split", "load_manifest", "load_medmnist", "read_manifest_rows"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Split:
    """``images``: float32 (N, 1, H, W) in [0, 1] (bright bone); ``labels``: int64 (N,). From a
    manifest with boxes or masks: ``masks`` bool (N, H, W) on the model grid, where the finding was
    marked, and ``annotated`` bool (N,), the images that carry any mark."""

    images: torch.Tensor
    labels: np.ndarray
    masks: np.ndarray | None = None
    annotated: np.ndarray | None = None


def load_medmnist(path: Path, *, limit: int | None = None) -> dict[str, Split]:
    """The train/val/test splits of a MedMNIST npz (binary label in column 0); ``limit`` keeps N
    evenly spaced images of each split (files may be ordered by label: PneumoniaMNIST's training
    split has its 1,214 normals first, so its first N would hold one class only)."""
    if not path.is_file():
        raise FileNotFoundError(f"training data not found: {path}")
    with np.load(path) as npz:
        out = {}
        for split in ("train", "val", "test"):
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
            if images.ndim != 3:
                raise ValueError(f"{split}_images must be (N, H, W) greyscale, not {images.shape}")
            if limit is not None and limit < len(images):
                keep = np.unique(np.linspace(0, len(images) - 1, limit).round().astype(np.int64))
                images, labels = images[keep], labels[keep]
            out[split] = Split(
                images=torch.from_numpy(images.astype(np.float32) / 255.0)[:, None],
                labels=labels.reshape(len(images), -1)[:, 0].astype(np.int64),
            )
    return out


#: The box columns of a CSV manifest (the worklist's export writes them): source pixels of the
#: instance's frame, [min, max) in each axis, as ``regions[].bbox`` in the result JSON.
BOX_COLUMNS = ("bbox_row_min", "bbox_col_min", "bbox_row_max", "bbox_col_max")


@dataclass(slots=True)
class _Image:
    """One image of a manifest: where it is, the rows that name it, and what they say of the finding."""

    file: Path
    member: str | None
    frame: int
    split: str
    rows: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    mask: Path | None = None


def read_manifest_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV manifest, or of a JSON one (a list of objects, or ``{"rows": [...]}``)."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path.name}")
    if path.suffix.lower() != ".json":
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    data = json.loads(path.read_text())
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path.name}: a JSON manifest is a list of objects, or an object with a 'rows' list")
    return rows


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _label(value: Any, row: int) -> int | None:
    text = _text(value).lower()
    if text in ("", "unknown", "none", "null"):
        return None
    if text in ("1", "1.0", "true"):
        return 1
    if text in ("0", "0.0", "false"):
        return 0
    raise ValueError(f"manifest row {row}: the finding's label must be 1, 0 or empty (unknown)")


def _boxes(row: dict[str, Any], n: int) -> list[tuple[int, int, int, int]]:
    """The row's boxes: the four box columns, or (JSON) ``boxes``, a list of [row_min, col_min,
    row_max, col_max]."""
    given = row.get("boxes") or []
    try:
        if isinstance(given, str):
            given = json.loads(given) if given.strip() else []
        if not isinstance(given, list):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"manifest row {n}: boxes is a list of [row_min, col_min, row_max, col_max]") from None
    raw: list[Any] = list(given)
    values = [_text(row.get(c)) for c in BOX_COLUMNS]
    if any(values):
        raw.append(values)
    out = []
    for box in raw:
        try:
            r0, c0, r1, c1 = (int(float(v)) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"manifest row {n}: a box is four numbers, row_min, col_min, row_max, col_max") from None
        if r1 <= r0 or c1 <= c0 or min(r0, c0) < 0:
            raise ValueError(f"manifest row {n}: a box must have row_max > row_min >= 0 and col_max > col_min >= 0")
        out.append((r0, c0, r1, c1))
    return out


def _manifest_images(path: Path, rows: list[dict[str, Any]], finding: str) -> tuple[list[_Image], int]:
    """The manifest's images, each once: rows naming the same image (file, zip member, frame; the
    worklist exports one row per reviewed region) are merged, a folder stands for every file in it.
    An image is positive when any of its rows says 1, negative when they all say 0. Returns the
    images and the number of rows passed over (no split, or the finding unknown)."""
    images: dict[tuple[Path, str | None, int], _Image] = {}
    skipped = 0
    for n, row in enumerate(rows, start=2 if path.suffix.lower() != ".json" else 1):
        split, label = _text(row.get("split")), _label(row.get(finding), n)
        if split not in ("train", "val", "test") or label is None:
            skipped += 1
            continue
        if not _text(row.get("path")):
            raise ValueError(f"manifest row {n}: no path")
        file = (path.parent / _text(row["path"])).resolve()
        member = _text(row.get("member")) or None
        try:
            frame = int(float(_text(row.get("frame")) or 1))
        except ValueError:
            raise ValueError(f"manifest row {n}: frame is a number (1-based)") from None
        if frame < 1:
            raise ValueError(f"manifest row {n}: frame is 1-based")
        boxes = _boxes(row, n)
        mask = (path.parent / _text(row["mask"])).resolve() if _text(row.get("mask")) else None
        if file.is_dir() and member is None:
            if boxes or mask:
                raise ValueError(f"manifest row {n}: boxes and masks mark one image, not a folder")
            inside = [(item.path, item.member) for item in iter_inputs([file]) if isinstance(item, InputFile)]
        else:
            inside = [(file, member)]
        for one, one_member in inside:
            image = images.setdefault((one, one_member, frame), _Image(one, one_member, frame, split))
            if image.split != split:
                raise ValueError(f"manifest rows {image.rows[0]} and {n} put the same image in {image.split} and "
                                 f"{split}: an image belongs to one split")
            image.rows.append(n)
            image.labels.append(label)
            if label == 1:
                image.boxes.extend(boxes)
                image.mask = mask or image.mask
    return list(images.values()), skipped


def _read_input(image: _Image, members: dict[Path, dict[str, InputFile]]) -> InputFile | None:
    """The image's input; a zip's members are listed once (``members`` caches them per zip)."""
    if image.member is None:
        return InputFile(image.file.name, image.file, size=image.file.stat().st_size if image.file.exists() else 0)
    if image.file not in members:
        members[image.file] = {item.member: item for item in iter_inputs([image.file])
                               if isinstance(item, InputFile) and item.member is not None}
    return members[image.file].get(image.member)


def _source_mask(image: _Image, shape: tuple[int, int]) -> np.ndarray | None:
    """Where the finding was marked on the frame (boxes and the mask file), or None when unmarked."""
    if not image.boxes and image.mask is None:
        return None
    marked = np.zeros(shape, dtype=bool)
    for r0, c0, r1, c1 in image.boxes:
        if r1 > shape[0] or c1 > shape[1]:
            raise ValueError(f"manifest row {image.rows[0]}: a box reaches row {r1}, column {c1} of a {shape[0]}x"
                             f"{shape[1]} frame (rows and columns swapped?)")
        marked[r0:r1, c0:c1] = True
    if image.mask is not None:
        if not image.mask.is_file():
            raise ValueError(f"manifest row {image.rows[0]}: its mask file is not there")
        try:
            if image.mask.suffix.lower() == ".npy":
                drawn = np.load(image.mask)
            else:
                with Image.open(image.mask) as picture:
                    drawn = np.asarray(picture)
        except (OSError, ValueError):  # the message would name the file's path: the row says which
            raise ValueError(f"manifest row {image.rows[0]}: its mask cannot be read (PNG or .npy)") from None
        if drawn.ndim == 3:
            drawn = drawn[..., 0]
        if drawn.shape != shape:
            raise ValueError(f"manifest row {image.rows[0]}: the mask is {drawn.shape[0]}x{drawn.shape[1]}, the "
                             f"frame {shape[0]}x{shape[1]}")
        marked |= drawn != 0
    return marked


def load_manifest(path: Path, *, finding: str, size: tuple[int, int], limit: int | None = None,
                  splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Split]:
    """Splits from a manifest (CSV, or JSON with the same keys), one row per image or per marked
    region: ``path`` (a DICOM file, a zip with ``member``, or a folder of them; relative to the
    manifest), ``split`` (train/val/test), a column named after the finding with 1, 0 or empty
    (unknown: skipped), and optionally ``frame`` (1-based), boxes (:data:`BOX_COLUMNS`, or JSON
    ``boxes``) and ``mask`` (a PNG or .npy of the frame's size) where the finding is.

    Each image goes through the serving chain (header read, eligibility, decode, window, crop,
    resize), so training sees what serving will; its boxes and mask go through the same crop onto
    the model grid. Ineligible or unreadable files are skipped and counted in the log, never fatal.
    Only ``splits`` are read, and each of them must hold some images.
    """
    from ..errors import SecondReaderError
    from ..pipeline import display_frames, parse_input
    from ..preprocessing import InputSpec, prepare_frame

    spec = InputSpec(size=size, mean=0.0, std=1.0)
    found, skipped = _manifest_images(path, read_manifest_rows(path), finding)
    unreadable = 0
    zip_members: dict[Path, dict[str, InputFile]] = {}
    by_split: dict[str, list[tuple[torch.Tensor, int, np.ndarray | None]]] = {s: [] for s in splits}
    for image in found:
        if image.split not in by_split:
            continue
        chosen = by_split[image.split]
        if limit is not None and len(chosen) >= limit:
            continue
        item = _read_input(image, zip_members)
        parsed = parse_input(item) if item is not None else None
        if parsed is None or parsed.instance is None or parsed.eligibility is None or not parsed.eligibility.ok:
            unreadable += 1
            continue
        try:
            frames = display_frames(parsed, max_pixels=64_000_000)
        except (SecondReaderError, OSError):
            unreadable += 1
            continue
        if image.frame > len(frames):
            raise ValueError(f"manifest row {image.rows[0]}: frame {image.frame} of an image with {len(frames)}")
        frame = frames[image.frame - 1]
        tensor, geometry = prepare_frame(frame, spec)
        marked = _source_mask(image, frame.shape)
        chosen.append((tensor, max(image.labels), None if marked is None else geometry.to_model_mask(marked)))
    if skipped or unreadable:
        logger.warning("manifest: %d row(s) without a split or a known label skipped, %d image(s) ineligible or "
                       "unreadable", skipped, unreadable)
    out = {}
    for split, chosen in by_split.items():
        if not chosen:
            raise ValueError(f"manifest has no usable {split} images ({len(found)} images named, {unreadable} "
                             "unreadable): every split needs some")
        masks = np.zeros((len(chosen), *size), dtype=bool)
        annotated = np.zeros(len(chosen), dtype=bool)
        for k, (_, _, mask) in enumerate(chosen):
            if mask is not None:
                masks[k], annotated[k] = mask, True
        out[split] = Split(images=torch.stack([t for t, _, _ in chosen]),
                           labels=np.asarray([y for _, y, _ in chosen], dtype=np.int64),
                           masks=masks if annotated.any() else None, annotated=annotated if annotated.any() else None)
    return out
