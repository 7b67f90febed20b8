"""Writing a screened study's outputs: the PNG overlays (and their viewer layers) and the DICOM
outputs (SC, SEG, SR), under ``<out_dir>/<study>/<SOP Instance UID>/``.

The pipeline screens and hands over what it found (:class:`ScreenedFrame` per frame, the study's
findings, regions and priority); this module decides the files' names (:meth:`StudyOutputs.planned`)
and writes them (:meth:`StudyOutputs.write`), now or later (``defer_outputs``). It knows nothing of
the pipeline or its options: every value it needs is an argument.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..errors import OutputEncodingError
from ..fileio import atomic_path
from ..logsafe import study_key
from ..model.card import ModelCard
from ..results import RegionResult, WrittenOutputs
from ..scoring.priority import FindingResult, Priority
from .dicom import RegionOutput, build_outputs
from .overlay import render_layer, render_overlay, write_png
from .provenance import Provenance, SeriesSettings

__all__ = ["DICOM_KINDS", "ScreenedFrame", "StudyOutputs", "dicom_paths", "overlay_paths", "write_dicom_outputs",
           "write_overlays"]

logger = logging.getLogger(__name__)

#: The DICOM outputs of one screened single-frame instance (a SEG only where it has a heatmap).
DICOM_KINDS = ("sc", "seg", "sr")


@dataclass(frozen=True, slots=True)
class ScreenedFrame:
    """One screened frame: its picture as the models saw it (windowed, float32 in [0, 1], bright
    bone), its calibrated probability and heatmap (on the source grid) per finding code, and the
    models whose scope left its instance out (model reference → the reason)."""

    sop_instance_uid: str
    frame: int  # 1-based
    display: np.ndarray
    spacing_mm: tuple[float, float] | None
    #: The instance's header (its first frame only): the DICOM outputs are derived from it.
    dataset: Dataset | None
    probabilities: dict[str, float]
    heat: dict[str, np.ndarray]
    out_of_scope: Mapping[str, str]


def _overlay_path(study_uid: str, frame: ScreenedFrame, code: str) -> Path:
    name = f"{code}.png" if frame.frame == 1 else f"{code}-frame{frame.frame}.png"
    return Path(study_uid) / frame.sop_instance_uid / name


def _dicom_path(study_uid: str, frame: ScreenedFrame, kind: str) -> Path:
    return Path(study_uid) / frame.sop_instance_uid / f"{kind}.dcm"


def _dicom_frames(frames: Sequence[ScreenedFrame]) -> list[ScreenedFrame]:
    """The frames that get SC, SEG and SR: the first frame of each single-frame instance."""
    return [f for f in frames
            if f.dataset is not None and f.frame == 1 and int(f.dataset.get("NumberOfFrames", 1) or 1) == 1]


def overlay_paths(study_uid: str, frames: Sequence[ScreenedFrame]) -> list[str]:
    """The overlays :func:`write_overlays` writes, relative to the output folder: one per heatmap."""
    return [_overlay_path(study_uid, f, code).as_posix() for f in frames for code in f.heat]


def dicom_paths(study_uid: str, frames: Sequence[ScreenedFrame]) -> list[str]:
    """The DICOM outputs :func:`write_dicom_outputs` writes when nothing fails, relative to the output folder."""
    return [_dicom_path(study_uid, f, kind).as_posix()
            for f in _dicom_frames(frames) for kind in DICOM_KINDS if kind != "seg" or f.heat]


def write_overlays(study_uid: str, frames: Sequence[ScreenedFrame], regions: Sequence[RegionResult],
                   out_dir: Path) -> list[str]:
    """A PNG overlay per heatmap (the frame, the heat, its regions, the probability), and the same
    heat as a transparent layer beside it; returns the overlays written (not the layers)."""
    written = []
    for frame in frames:
        for code, heat in frame.heat.items():
            mine = [r.region for r in regions
                    if r.sop_instance_uid == frame.sop_instance_uid and r.region.frame == frame.frame
                    and r.region.finding == code]
            relative = _overlay_path(study_uid, frame, code)
            title = f"{code} p={frame.probabilities.get(code, 0.0):.2f}"
            write_png(render_overlay(frame.display, heat, mine, title=title), out_dir / relative)
            # The same heat as a transparent layer for the viewer's toggleable overlay (not listed
            # in the result: it is served beside the PNG, at <finding>.layer.png).
            write_png(render_layer(heat), out_dir / relative.with_suffix(".layer.png"))
            written.append(relative.as_posix())
    return written


def _instance_finding(frame: ScreenedFrame, f: FindingResult) -> FindingResult:
    """A study finding as it stands on one instance: that instance's probability, or not
    applicable when the model's scope leaves the instance out (or the whole study)."""
    if not f.applicable:
        return f
    reason = frame.out_of_scope.get(f.model)
    if reason is not None or f.code not in frame.probabilities:
        return FindingResult(f.code, None, f.operating_point, f.urgent_point, f.model, mode=f.mode, applicable=False,
                             not_applicable_reason=reason or "not computed for this image")
    return FindingResult(f.code, frame.probabilities[f.code], f.operating_point, f.urgent_point, f.model,
                         mode=f.mode)


def write_dicom_outputs(study_uid: str, frames: Sequence[ScreenedFrame], findings: Sequence[FindingResult],
                        regions: Sequence[RegionResult], priority: Priority, provenance: Provenance,
                        out_dir: Path) -> list[str]:
    """SC, SEG and SR for every screened single-frame instance (contract 4); a SEG only where a
    finding has a heatmap on the instance (none where every model was not applicable to it)."""
    written = []
    for number, frame in enumerate(_dicom_frames(frames), start=1):
        assert frame.dataset is not None
        mine = [RegionOutput(r.region_id, r.region, r.score)
                for r in regions if r.sop_instance_uid == frame.sop_instance_uid]
        instance_findings = [_instance_finding(frame, f) for f in findings]
        outputs = build_outputs(frame.dataset, display=frame.display, heats=frame.heat, findings=instance_findings,
                                regions=mine, priority=priority, provenance=provenance, instance_number=number)
        for kind, dataset in outputs.items():
            relative = _dicom_path(study_uid, frame, kind)
            with atomic_path(out_dir / relative) as tmp:  # concurrent writers of one study each write their own
                dataset.save_as(tmp, enforce_file_format=True)
            written.append(relative.as_posix())
    return written


@dataclass(frozen=True, slots=True)
class StudyOutputs:
    """A screened study's overlays (PNG) and DICOM outputs (SC, SEG, SR), not yet written.

    The caller writes them with :meth:`write` at once, or answers the result first, listing what
    :meth:`planned` says (``artifacts.status`` "pending"), and writes them after (the service does,
    on its own encoder threads), keeping the encoding off the request path.
    """

    study_uid: str
    frames: Sequence[ScreenedFrame]
    findings: Sequence[FindingResult]
    regions: Sequence[RegionResult]
    priority: Priority
    out_dir: Path
    #: The models that screened the study (the DICOM outputs' provenance).
    models: tuple[ModelCard, ...]
    series: SeriesSettings
    #: SC, SEG and SR per screened single-frame instance (none: overlays only).
    dicom_outputs: bool = True

    def _writes_dicom(self) -> bool:
        return self.dicom_outputs and bool(self.findings)

    def planned(self) -> tuple[list[str], list[str]]:
        """The heatmap overlays and DICOM files :meth:`write` writes when nothing fails."""
        heatmaps = overlay_paths(self.study_uid, self.frames)
        dicom = dicom_paths(self.study_uid, self.frames) if self._writes_dicom() else []
        return heatmaps, dicom

    def write(self) -> WrittenOutputs:
        """Write the overlays, then the DICOM outputs. Never raises for a bad output: what could not
        be written is left out of the lists, and ``status`` is "failed"."""
        t0 = time.perf_counter()
        heatmaps: list[str] = []
        dicom: list[str] = []
        status = "written"
        try:
            heatmaps = write_overlays(self.study_uid, self.frames, self.regions, self.out_dir)
        except OutputEncodingError as exc:
            logger.warning("study %s: overlays not written (%s)", study_key(self.study_uid), exc)
            status = "failed"
        if self._writes_dicom():
            try:
                dicom = write_dicom_outputs(self.study_uid, self.frames, self.findings, self.regions, self.priority,
                                            Provenance(self.models, self.series), self.out_dir)
            except OutputEncodingError as exc:
                logger.warning("study %s: DICOM outputs not written (%s)", study_key(self.study_uid), exc)
                status = "failed"
            except OSError as exc:
                logger.warning("study %s: DICOM outputs not written (%s)", study_key(self.study_uid),
                               exc.strerror or type(exc).__name__)
                status = "failed"
        return WrittenOutputs(heatmaps, dicom, status, (time.perf_counter() - t0) * 1000.0)
