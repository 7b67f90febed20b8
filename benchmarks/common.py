"""Inputs, model loading, measuring and table printing shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from secondreader.config import default_models_dir
from secondreader.model.card import find_bundles, load_card
from secondreader.model.predictor import Predictor, TorchPredictor

__all__ = ["Table", "bundles", "device_name", "gpu_peak_mb", "j2k_cr", "load_predictors", "machine", "peak_rss_mb",
           "pct", "rate", "rg1_j2k", "synthetic_cr", "write_json"]


def synthetic_cr(path: Path, seed: int = 0, side: int = 2048, *, j2k: bool = False) -> Path:
    """A 12-bit chest-CR-like DICOM (smooth body, noise), uncompressed or JPEG 2000 lossless."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:side, 0:side] / side - 0.5
    img = 2000 + 1500 * np.exp(-(r**2 + c**2) * 6) + rng.normal(0, 60, (side, side))
    stored = np.clip(img, 0, 4095).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    if j2k:
        ds.compress(JPEG2000Lossless, stored, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)
    return path


def j2k_cr(path: Path, seed: int = 0, side: int = 2048) -> Path:
    return synthetic_cr(path, seed, side, j2k=True)


def rg1_j2k() -> Path | None:
    """The real RG1 chest CR (1955x1841), JPEG 2000 lossless, from pydicom-data or
    ``$SECONDREADER_BENCH_DATA``; ``None`` when neither has it."""
    folder = os.environ.get("SECONDREADER_BENCH_DATA")
    if folder and (Path(folder) / "RG1_J2KR.dcm").is_file():
        return Path(folder) / "RG1_J2KR.dcm"
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file("RG1_J2KR.dcm")
    except (ImportError, ValueError, OSError):
        return None
    return Path(str(found)) if found else None


def bundles() -> list[Path]:
    """Every model bundle in ``models/`` (cxr-pneumonia, and cxr-nodule once trained)."""
    return find_bundles(Path(os.environ.get("SECONDREADER_MODELS_DIR", default_models_dir())))


def load_predictors(device: str, **options: Any) -> list[Predictor]:
    """One predictor per bundle, the way the service builds them (``options`` go to TorchPredictor),
    each within its card's scope, as screening runs it: the synthetic CRs have no age and RG1 is an
    adult's, so the adult models (cxr-nodule, cxr-pneumonia-adult) run on every input and the
    paediatric cxr-pneumonia on none (two models sharing a finding code cannot both lose their
    scopes: screening refuses such a pair)."""
    out: list[Predictor] = []
    for bundle in bundles():
        card = load_card(bundle)
        if card.saliency.method == "dense":
            from secondreader.model.dense import predictor_for

            out.append(predictor_for(card, device=device))
        else:
            out.append(TorchPredictor(card, device=device, **options))
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"


def machine() -> dict[str, Any]:
    return {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gpu_peak_mb() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` percentile of ``values`` (seconds) in milliseconds."""
    return float(np.percentile(np.asarray(values), q)) * 1000.0


def rate(fn: Callable[[], int], *, seconds: float, min_calls: int = 3, sync: bool = False) -> float:
    """Items/s of ``fn`` (which returns how many items it did) over about ``seconds``."""
    def _sync() -> None:
        if sync:
            torch.cuda.synchronize()
    fn()
    _sync()
    n, calls, start = 0, 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        n += fn()
        calls += 1
    _sync()
    return n / (time.perf_counter() - start)


@dataclass
class Table:
    """A fixed-width table printed as it fills, kept for the JSON record."""

    title: str
    columns: list[str]
    widths: list[int] | None = None
    rows: list[list[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.widths = self.widths or [max(12, len(c) + 2) for c in self.columns]
        print(f"\n{self.title}", flush=True)
        pairs = enumerate(zip(self.columns, self.widths, strict=True))
        print("".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in pairs), flush=True)

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))
        assert self.widths is not None
        out = []
        for i, (cell, w) in enumerate(zip(cells, self.widths, strict=True)):
            text = f"{cell:.1f}" if isinstance(cell, float) and abs(cell) >= 10 else (
                f"{cell:.3g}" if isinstance(cell, float) else ("-" if cell is None else str(cell)))
            out.append(f"{text:<{w}}" if i == 0 else f"{text:>{w}}")
        print("".join(out), flush=True)

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1, default=str))


def wait_until_ready(base: str, *, timeout: float, stopped: Callable[[], str | None]) -> float:
    """Poll ``base/readyz`` until it answers 200; seconds waited. Raises RuntimeError with
    ``stopped()``'s reason when the service stops while starting (None while it runs), or after
    ``timeout`` s."""
    import httpx

    t0 = time.monotonic()
    while True:
        reason = stopped()
        if reason is not None:
            raise RuntimeError(reason)
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the service was not ready in {timeout:.0f} s")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
