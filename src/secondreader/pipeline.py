"""The one code path from DICOM inputs to study results; the CLI, the service, the DICOM receiver
and the audit all call it. This is the only module that knows the order of the steps:

read header → eligibility → decode (Modality LUT, VOI) → window/invert → crop/resize/normalise →
predict (+ GradCAM) → calibrate → heatmap on the source grid → regions → priority → overlays and
DICOM outputs (written before the result, or by the caller after it: ``defer_outputs``).

Each model runs in its mode at the site (``live``, ``shadow``; ``off`` models do not run) and only
on the instances inside its scope (ages, views, modalities, body parts from the header): a model
whose scope leaves out every instance of a study does not run on it, and its findings are reported
as not applicable with the reason.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset

from .dicom.eligibility import Eligibility, evaluate
from .dicom.instance import CxrInstance
from .dicom.io import (
    MAX_FILE_BYTES,
    DicomFile,
    InputFile,
    InputProblem,
    StagedInput,
    drop_deferred,
    iter_inputs,
    read_dataset,
)
from .dicom.pixels import decode_display
from .errors import CorruptPixelDataError, OutputEncodingError, ProcessingError, SecondReaderError
from .explain.heatmap import heatmap_on_source
from .explain.regions import Region, extract_regions
from .fileio import atomic_path
from .logsafe import study_key
from .model.card import ModelCard, check_shared_findings
from .model.dense import dense_regions
from .model.modes import ModelMode
from .model.predictor import Predictor
from .outputs.dicom import RegionOutput, build_outputs
from .outputs.overlay import render_layer, render_overlay, write_png
from .outputs.provenance import Provenance, SeriesSettings
from .preprocessing import GeometryRecord, prepare_frame, window_frame
from .quarantine import Quarantine
from .results import InstanceResult, InstanceStatus, RegionResult, StudyResult, WrittenOutputs
from .scoring.priority import FindingResult, Priority, Route, StudyStatus, finding_score, prioritise

__all__ = ["ParsedInput", "ScreeningOptions", "StudyOutputs", "display_frames", "parse_input", "run_study",
           "screen_inputs", "screen_paths", "screen_pixels"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScreeningOptions:
    """What a screening run needs, as typed values (entry points build it from Settings)."""

    predictors: Sequence[Predictor]
    max_pixels: int = 64_000_000
    out_dir: Path | None = None
    explain: bool = True
    dicom_outputs: bool = True  # SC, SEG and SR per screened instance, when out_dir is set
    #: Leave the overlays and DICOM outputs to the caller (``StudyResult.outputs``), so that a
    #: result can be answered before they are encoded (the service's request path).
    defer_outputs: bool = False
    series: SeriesSettings = field(default_factory=SeriesSettings)
    #: Where the original bytes of failed inputs are kept with their reason (none: not kept).
    quarantine: Quarantine | None = None
    quarantine_channel: str = "cli"
    #: Each model's mode at this site, by model name (``SECONDREADER_MODEL_MODES``); a model not
    #: named runs in its card's default mode.
    modes: Mapping[str, ModelMode] = field(default_factory=dict)
    #: Where zip members are unpacked while their study is screened (removed after it). None: a
    #: ``scratch`` folder beside the quarantine (so that a failing member is moved into it, not
    #: copied), or the system's temporary folder when there is no quarantine.
    scratch_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.predictors:
            raise ValueError("at least one predictor is needed")
        check_shared_findings([p.card for p in self.running()])

    def scratch(self) -> Path | None:
        """The folder zip members are unpacked into (None: the system's temporary folder)."""
        if self.scratch_dir is not None:
            return self.scratch_dir
        return self.quarantine.root.parent / "scratch" if self.quarantine is not None else None

    def mode_of(self, card: ModelCard) -> ModelMode:
        return ModelMode(self.modes.get(card.name, card.default_mode))

    def running(self) -> list[Predictor]:
        """The predictors that run (every one whose mode is not ``off``)."""
        return [p for p in self.predictors if self.mode_of(p.card) is not ModelMode.OFF]

    def models_json(self) -> list[dict[str, str]]:
        """The result's ``models[]``: every loaded model with the mode it ran in (``off``: not run)."""
        return [{"name": p.card.name, "version": p.card.version, "device_uid": p.card.device_uid,
                 "mode": self.mode_of(p.card).value} for p in self.predictors]


@dataclass(slots=True, weakref_slot=True)
class ParsedInput:
    """Pass 1 over one input: its header facts and eligibility, or why it could not be read.

    ``staged`` is the file the input is read from (a zip member's scratch copy, removed by
    :meth:`release`, or when the object is collected); ``dicom`` its header as read, the pixel data
    left in the file until it is decoded (None once decoded, or when not kept)."""

    source: str
    input: InputFile | None
    instance: CxrInstance | None = None
    eligibility: Eligibility | None = None
    error: str | None = None
    staged: StagedInput | None = None
    dicom: DicomFile | None = None

    def release(self) -> None:
        """Forget the header and remove the scratch copy (if any): nothing more is read."""
        self.dicom = None
        if self.staged is not None:
            self.staged.remove()


@dataclass(slots=True)
class _Frame:
    sop_instance_uid: str
    frame: int
    display: np.ndarray
    spacing_mm: tuple[float, float] | None
    windowed: bool
    invert: bool
    dataset: Dataset | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    heat: dict[str, np.ndarray] = field(default_factory=dict)
    #: Models whose scope leaves this frame's instance out: model reference → the reason.
    out_of_scope: dict[str, str] = field(default_factory=dict)


def parse_input(item: InputFile | InputProblem, *, scratch: Path | None = None) -> ParsedInput:
    """Read one input's header and decide its eligibility (no pixel is read).

    A zip member is first unpacked into a file in ``scratch`` (the system's temporary folder when
    None), which the result holds until :meth:`ParsedInput.release`; a plain file is read where
    it lies. The header is kept (``dicom``) for the decoding, which reads the pixel data alone."""
    if isinstance(item, InputProblem):
        return ParsedInput(source=item.source, input=None, error=item.reason)
    parsed = ParsedInput(source=item.source, input=item)
    try:
        parsed.staged = item.stage(scratch)
        if parsed.staged.temporary:
            weakref.finalize(parsed, parsed.staged.remove)
        dicom = read_dataset(parsed.staged.path)
        instance = CxrInstance.from_dataset(dicom.dataset, pixel_data_truncated=dicom.truncated)
    except SecondReaderError as exc:
        parsed.error = str(exc)
        return parsed
    except OSError as exc:
        parsed.error = f"file cannot be read ({exc.strerror or 'I/O error'})"
        return parsed
    parsed.dicom, parsed.instance, parsed.eligibility = dicom, instance, evaluate(instance)
    return parsed


def _unreadable_result(parsed: ParsedInput) -> StudyResult:
    reason = parsed.error or "file has no Study Instance UID"
    sop = parsed.instance.sop_instance_uid if parsed.instance else None
    return StudyResult(
        study_instance_uid=None,
        status=StudyStatus.FAILED,
        reason=reason,
        instances=[InstanceResult(parsed.source, sop, InstanceStatus.FAILED, reason)],
        priority=Priority(0, Route.NONE, "unreadable-input"),
        source=parsed.source,
    )


def scope_reasons(instance: CxrInstance | None, predictors: Sequence[Predictor]) -> dict[str, str]:
    """Model reference → why the model does not apply to ``instance``, for each model whose scope
    leaves it out (``None``: a picture without a header, whose age, view, modality and body part
    are unknown). Decided on the header alone."""
    reasons = {}
    for predictor in predictors:
        card = predictor.card
        if card.scope is None:
            continue
        reason = card.scope.not_applicable(
            card.name, age=instance.patient_age if instance else None,
            view=instance.view_position if instance else None, modality=instance.modality if instance else None,
            body_part=instance.body_part_examined if instance else None)
        if reason is not None:
            reasons[card.ref] = reason
    return reasons


def _decode_frames(parsed: ParsedInput, max_pixels: int) -> list[_Frame]:
    """Decode one instance to its frames in display units (not yet windowed), from the header
    :func:`parse_input` read: only the pixel data is read now, once."""
    assert parsed.input is not None and parsed.instance is not None
    dicom, parsed.dicom = parsed.dicom, None
    if dicom is None:  # the header was not kept: read it again
        if parsed.staged is None:
            parsed.staged = parsed.input.stage()
            if parsed.staged.temporary:
                weakref.finalize(parsed, parsed.staged.remove)
        dicom = read_dataset(parsed.staged.path)
    if dicom.truncated:
        raise CorruptPixelDataError("file is truncated: it ends inside the pixel data")
    image = decode_display(dicom.dataset, parsed.instance, max_pixels=max_pixels)
    # the header outlives the file (the outputs are written from it later): nothing left unread in it
    drop_deferred(dicom.dataset)
    sop = parsed.instance.sop_instance_uid or ""
    return [
        _Frame(sop, index + 1, frame, parsed.instance.pixel_spacing_mm, windowed=image.windowed, invert=image.invert,
               dataset=dicom.dataset if index == 0 else None)
        for index, frame in enumerate(image.frames)
    ]


def display_frames(parsed: ParsedInput, *, max_pixels: int) -> list[np.ndarray]:
    """Decode and window one eligible parsed input, as screening does (steps 1–2): float32 frames
    (rows, cols) in [0, 1], bright bone. Training from DICOM uses this too.

    Raises
    ------
    SecondReaderError, OSError
        When the file cannot be read or decoded.
    """
    return [window_frame(f.display, windowed=f.windowed, invert=f.invert) for f in _decode_frames(parsed, max_pixels)]


_Batch = tuple[list[_Frame], torch.Tensor, list[GeometryRecord]]


def _prepare(frames: list[_Frame], predictors: Sequence[Predictor]) -> list[_Batch | None]:
    """Window/invert each frame in place, then build each model's input batch from the frames in
    its scope (``None``: the model applies to none of them and will not run)."""
    for frame in frames:
        frame.display = window_frame(frame.display, windowed=frame.windowed, invert=frame.invert)
    batches: list[_Batch | None] = []
    for predictor in predictors:
        mine = [f for f in frames if predictor.card.ref not in f.out_of_scope]
        if not mine:
            batches.append(None)
            continue
        prepared = [prepare_frame(f.display, predictor.card.input_spec) for f in mine]
        batches.append((mine, torch.stack([t for t, _ in prepared]), [g for _, g in prepared]))
    return batches


def _join_scope_reasons(frames: Iterable[_Frame], ref: str) -> str:
    return "; ".join(dict.fromkeys(f.out_of_scope[ref] for f in frames if ref in f.out_of_scope)) or "out of scope"


def _predict(
    frames: list[_Frame],
    predictors: Sequence[Predictor],
    batches: Sequence[_Batch | None],
    explain: bool,
    modes: Sequence[ModelMode],
) -> list[FindingResult]:
    """Run every model over the frames in its scope; fill per-frame probabilities/heat; return
    the study's findings (not applicable, with the reason, for a model whose scope holds none)."""
    findings: list[FindingResult] = []
    for predictor, batch, mode in zip(predictors, batches, modes, strict=True):
        card = predictor.card
        if batch is None:
            reason = _join_scope_reasons(frames, card.ref)
            findings.extend(FindingResult(spec.code, None, spec.operating_point, spec.urgent_point, card.ref,
                                          mode=mode.value, applicable=False, not_applicable_reason=reason)
                            for spec in card.findings)
            continue
        mine, tensor, geometries = batch
        predictions = predictor.predict(tensor, explain=explain)
        for k, spec in enumerate(card.findings):
            probs = []
            for frame, geometry, prediction in zip(mine, geometries, predictions, strict=True):
                p = float(spec.calibration.probability(prediction.logits[k]))
                frame.probabilities[spec.code] = p
                probs.append(p)
                if prediction.saliency is not None:
                    frame.heat[spec.code] = heatmap_on_source(prediction.saliency[k], geometry)
            findings.append(
                FindingResult(spec.code, max(probs), spec.operating_point, spec.urgent_point, card.ref,
                              mode=mode.value)
            )
    return findings


def _regions(frames: list[_Frame], findings: list[FindingResult],
             predictors: Sequence[Predictor] = ()) -> list[RegionResult]:
    """Regions of every positive finding, on each frame where that finding is positive. A dense
    model's regions come from its probability map at its card's thresholds; others' from saliency."""
    dense = {spec.code: p.card.saliency for p in predictors for spec in p.card.findings
             if p.card.saliency.method == "dense"}
    scored: list[tuple[float, Region, str]] = []
    for finding in findings:
        if not finding.positive:
            continue
        for frame in frames:
            p = frame.probabilities.get(finding.code, 0.0)
            heat = frame.heat.get(finding.code)
            if heat is None or p < finding.operating_point:
                continue
            saliency = dense.get(finding.code)
            if saliency is not None:
                found = dense_regions(heat, finding=finding.code, frame=frame.frame, spacing_mm=frame.spacing_mm,
                                      threshold=saliency.region_threshold, floor=saliency.region_floor)
            else:
                found = extract_regions(heat, finding=finding.code, frame=frame.frame, spacing_mm=frame.spacing_mm)
            for region in found:
                scored.append((p * region.peak, region, frame.sop_instance_uid))
    scored.sort(key=lambda item: (-item[0], item[1].finding, item[2], item[1].frame, item[1].bbox))
    counters: dict[str, int] = {}
    out = []
    for score, region, sop in scored:
        counters[region.finding] = counters.get(region.finding, 0) + 1
        out.append(RegionResult(f"{region.finding}-{counters[region.finding]}", region, score, sop))
    return out


def _overlay_path(study_uid: str, frame: _Frame, code: str) -> Path:
    name = f"{code}.png" if frame.frame == 1 else f"{code}-frame{frame.frame}.png"
    return Path(study_uid) / frame.sop_instance_uid / name


def _write_overlays(study_uid: str, frames: list[_Frame], regions: list[RegionResult], out_dir: Path) -> list[str]:
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


def screen_pixels(display: np.ndarray, predictors: Sequence[Predictor],
                  modes: Mapping[str, ModelMode] | None = None) -> list[FindingResult]:
    """Screen a picture that is already windowed (float32 (rows, cols) in [0, 1], bright bone),
    such as a PNG export: steps 3–5 and the models, no DICOM. Returns calibrated findings.

    A picture has no header: its view, modality and body part count as unknown (accepted), and so
    does the patient's age, which each model's scope decides (``unknown_age``). ``modes`` as
    :attr:`ScreeningOptions.modes`; ``off`` models do not run."""
    options = ScreeningOptions(predictors=predictors, modes=modes or {})
    running = options.running()
    frames = [_Frame("", 1, np.asarray(display, dtype=np.float32), None, windowed=True, invert=False,
                     out_of_scope=scope_reasons(None, running))]
    return merge_shared_findings(_predict(frames, running, _prepare(frames, running), explain=False,
                                          modes=[options.mode_of(p.card) for p in running]))


_DICOM_KINDS = ("sc", "seg", "sr")


def _dicom_frames(frames: list[_Frame]) -> list[_Frame]:
    """The frames that get SC, SEG and SR: the first frame of each single-frame instance."""
    return [f for f in frames
            if f.dataset is not None and f.frame == 1 and int(f.dataset.get("NumberOfFrames", 1) or 1) == 1]


def _dicom_path(study_uid: str, frame: _Frame, kind: str) -> Path:
    return Path(study_uid) / frame.sop_instance_uid / f"{kind}.dcm"


def _instance_finding(frame: _Frame, f: FindingResult) -> FindingResult:
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


def _write_dicom_outputs(study_uid: str, frames: list[_Frame], findings: list[FindingResult],
                         regions: list[RegionResult], priority: Priority, predictors: Sequence[Predictor],
                         out_dir: Path, series: SeriesSettings) -> list[str]:
    """SC, SEG and SR for every screened single-frame instance (contract 4); a SEG only where a
    finding has a heatmap on the instance (none where every model was not applicable to it)."""
    provenance = Provenance(tuple(p.card for p in predictors), series)
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


@dataclass(slots=True)
class StudyOutputs:
    """A screened study's overlays (PNG) and DICOM outputs (SC, SEG, SR), not yet written.

    :func:`run_study` writes them before it returns, unless ``ScreeningOptions.defer_outputs``: then
    the result lists the files :meth:`planned` (``artifacts.status`` "pending") and carries this
    object, and the caller writes them with :meth:`write` after the result is answered (the service
    does, on its own encoder threads), keeping the encoding off the request path.
    """

    study_uid: str
    frames: list[_Frame]
    findings: list[FindingResult]
    regions: list[RegionResult]
    options: ScreeningOptions

    def planned(self) -> tuple[list[str], list[str]]:
        """The heatmap overlays and DICOM files :meth:`write` writes when nothing fails."""
        heatmaps = [_overlay_path(self.study_uid, f, code).as_posix() for f in self.frames for code in f.heat]
        dicom: list[str] = []
        if self.options.dicom_outputs and self.findings:
            dicom = [_dicom_path(self.study_uid, f, kind).as_posix()
                     for f in _dicom_frames(self.frames) for kind in _DICOM_KINDS if kind != "seg" or f.heat]
        return heatmaps, dicom

    def write(self) -> WrittenOutputs:
        """Write the overlays, then the DICOM outputs. Never raises for a bad output: what could not
        be written is left out of the lists, and ``status`` is "failed"."""
        out_dir = self.options.out_dir
        assert out_dir is not None
        t0 = time.perf_counter()
        heatmaps: list[str] = []
        dicom: list[str] = []
        status = "written"
        try:
            heatmaps = _write_overlays(self.study_uid, self.frames, self.regions, out_dir)
        except OutputEncodingError as exc:
            logger.warning("study %s: overlays not written (%s)", study_key(self.study_uid), exc)
            status = "failed"
        if self.options.dicom_outputs and self.findings:
            try:
                dicom = _write_dicom_outputs(self.study_uid, self.frames, self.findings, self.regions,
                                             prioritise(StudyStatus.SCREENED, self.findings),
                                             self.options.running(), out_dir, self.options.series)
            except OutputEncodingError as exc:
                logger.warning("study %s: DICOM outputs not written (%s)", study_key(self.study_uid), exc)
                status = "failed"
            except OSError as exc:
                logger.warning("study %s: DICOM outputs not written (%s)", study_key(self.study_uid),
                               exc.strerror or type(exc).__name__)
                status = "failed"
        return WrittenOutputs(heatmaps, dicom, status, (time.perf_counter() - t0) * 1000.0)


def run_study(study_uid: str, members: Sequence[ParsedInput], options: ScreeningOptions) -> StudyResult:
    """Screen one study's instances (already parsed, in arrival order)."""
    t_start = time.perf_counter()
    timing = {"load": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    encode_ms = 0.0  # outputs written here (not deferred), in ms
    instances: list[InstanceResult] = []
    frames: list[_Frame] = []
    running = options.running()
    handled: set[str] = set()  # SOP Instance UIDs already screened or refused
    files: dict[str, tuple[str, str | None]] = {}
    for parsed in members:
        inst = parsed.instance
        assert inst is not None and parsed.eligibility is not None
        sop = inst.sop_instance_uid
        if sop is not None and sop in handled:
            instances.append(InstanceResult(parsed.source, sop, InstanceStatus.DUPLICATE,
                                            "SOP Instance UID already seen in this study"))
            continue
        if not parsed.eligibility.ok:
            instances.append(InstanceResult(parsed.source, sop, InstanceStatus.INELIGIBLE,
                                            parsed.eligibility.reason, parsed.eligibility.rule_ids))
            if sop:
                handled.add(sop)
            continue
        if sop is None:
            instances.append(InstanceResult(parsed.source, None, InstanceStatus.FAILED, "SOP Instance UID missing"))
            continue
        t0 = time.perf_counter()
        try:
            decoded = _decode_frames(parsed, options.max_pixels)
        except SecondReaderError as exc:
            instances.append(InstanceResult(parsed.source, sop, InstanceStatus.FAILED, str(exc)))
            continue
        except OSError as exc:
            instances.append(InstanceResult(parsed.source, sop, InstanceStatus.FAILED,
                                            f"file cannot be read ({exc.strerror or 'I/O error'})"))
            continue
        finally:
            timing["load"] += time.perf_counter() - t0
        out_of_scope = scope_reasons(inst, running)
        for frame in decoded:
            frame.out_of_scope = out_of_scope
        frames.extend(decoded)
        handled.add(sop)
        instances.append(InstanceResult(parsed.source, sop, InstanceStatus.SCREENED,
                                        not_applicable=_codes_out_of_scope(out_of_scope, running)))
        if parsed.input is not None:
            files[sop] = (str(parsed.input.path), parsed.input.member)

    findings: list[FindingResult] = []
    regions: list[RegionResult] = []
    heatmaps: list[str] = []
    dicom_files: list[str] = []
    outputs: StudyOutputs | None = None
    artifacts_status = "none"
    status_reason: str | None = None
    if frames:
        t0 = time.perf_counter()
        batches = _prepare(frames, running)
        timing["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            findings = merge_shared_findings(_predict(frames, running, batches, options.explain,
                                                      [options.mode_of(p.card) for p in running]))
        except (ProcessingError, RuntimeError) as exc:
            logger.error("study %s: inference failed (%s)", study_key(study_uid), type(exc).__name__)
            for i, outcome in enumerate(instances):
                if outcome.status is InstanceStatus.SCREENED:
                    instances[i] = InstanceResult(outcome.source, outcome.sop_instance_uid, InstanceStatus.FAILED,
                                                  "the model could not process this image")
            frames = []
        timing["inference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        regions = _regions(frames, findings, running) if frames else []
        timing["postprocess"] = time.perf_counter() - t0
        if frames and options.out_dir is not None:
            outputs = StudyOutputs(study_uid, frames, findings, regions, options)
            if options.defer_outputs:
                heatmaps, dicom_files = outputs.planned()
                artifacts_status = "pending"
            else:
                written = outputs.write()
                heatmaps, dicom_files, artifacts_status = written.heatmaps, written.dicom, written.status
                encode_ms = written.encode_ms
                outputs = None

    statuses = {i.status for i in instances}
    if InstanceStatus.SCREENED in statuses:
        status = StudyStatus.SCREENED
    elif InstanceStatus.FAILED in statuses:
        status = StudyStatus.FAILED
        status_reason = _join_reasons(i.reason for i in instances if i.status is InstanceStatus.FAILED)
    else:
        status = StudyStatus.INELIGIBLE
        status_reason = _join_reasons(i.reason for i in instances if i.status is InstanceStatus.INELIGIBLE)
    if status is not StudyStatus.SCREENED:
        findings, regions, heatmaps, dicom_files, outputs, artifacts_status = [], [], [], [], None, "none"
    timing["total"] = (time.perf_counter() - t_start) * 1000.0
    for key in ("load", "preprocess", "inference", "postprocess"):
        timing[key] *= 1000.0
    timing["encode"] = encode_ms
    result = StudyResult(
        study_instance_uid=study_uid,
        status=status,
        reason=status_reason,
        instances=instances,
        priority=prioritise(status, findings),
        findings=findings,
        regions=regions,
        models=options.models_json(),
        heatmaps=heatmaps,
        dicom=dicom_files,
        artifacts_status=artifacts_status,
        outputs=outputs,
        timing_ms=timing,
        files=files if status is StudyStatus.SCREENED else {},
        modality=next((m.instance.modality for m in members if m.instance is not None and m.instance.modality), None),
        accession_number=next((m.instance.accession_number for m in members
                               if m.instance is not None and m.instance.accession_number), None),
    )
    logger.info("study %s %s score=%d route=%s rule=%s instances=%d total_ms=%.0f",
                study_key(study_uid), status.value, result.priority.score, result.priority.route.value,
                result.priority.rule, len(instances), timing["total"])
    return result


def _codes_out_of_scope(out_of_scope: Mapping[str, str], predictors: Sequence[Predictor]) -> dict[str, str]:
    """Finding code → why no model of that code applies to an instance (its ``instances[].not_applicable``;
    a code that several models report is listed only when every one of them leaves the instance out)."""
    reasons: dict[str, list[str]] = {}
    applies: set[str] = set()
    for p in predictors:
        for spec in p.card.findings:
            if p.card.ref in out_of_scope:
                reasons.setdefault(spec.code, []).append(out_of_scope[p.card.ref])
            else:
                applies.add(spec.code)
    return {code: "; ".join(why) for code, why in reasons.items() if code not in applies}


def merge_shared_findings(findings: Sequence[FindingResult]) -> list[FindingResult]:
    """One finding per code, where several models report it (their scopes are disjoint: see
    :func:`~secondreader.model.card.check_shared_findings`): the applicable one, or, should a
    study's images fall in two scopes (one image says 3 years, another gives no age), the one that
    counts most for the route: routing before not, positive before negative, then the higher score
    against its own operating point; when none applies, one not-applicable finding giving every
    model's reason. Codes keep the order of their first finding."""
    by_code: dict[str, list[FindingResult]] = {}
    for f in findings:
        by_code.setdefault(f.code, []).append(f)
    out = []
    for same in by_code.values():
        applicable = [f for f in same if f.applicable]
        if applicable:
            out.append(max(applicable, key=lambda f: (f.routes, f.positive,
                                                      finding_score(f.probability or 0.0, f.operating_point))))
        elif len(same) == 1:
            out.append(same[0])
        else:
            first = same[0]
            out.append(replace(first, not_applicable_reason="; ".join(
                dict.fromkeys(f.not_applicable_reason or "out of scope" for f in same))))
    return out


def _join_reasons(reasons: Iterable[str | None]) -> str:
    unique = list(dict.fromkeys(r for r in reasons if r))
    return "; ".join(unique) if unique else "no instance could be screened"


#: Headers kept from parsing to decoding, across the studies of one run (each a few tens of KiB);
#: past this, an input's header is read again when it is decoded.
MAX_HEADERS_KEPT = 2_000


def screen_inputs(items: Iterable[InputFile | InputProblem], options: ScreeningOptions) -> Iterator[StudyResult]:
    """Group inputs into studies by Study Instance UID and screen each one.

    Files without a readable Study Instance UID are yielded at once as their own failed results;
    studies follow in order of first appearance. Scratch copies of zip members are removed once
    their study is screened (or failed), and whatever happens to the run.
    """
    studies: dict[str, list[ParsedInput]] = {}
    scratch = options.scratch()
    kept = 0
    try:
        for item in items:
            parsed = parse_input(item, scratch=scratch)
            if parsed.instance is None or parsed.instance.study_instance_uid is None:
                logger.warning("input without a readable study: %s", parsed.error or "no Study Instance UID")
                unreadable = _unreadable_result(parsed)
                try:
                    _quarantine_failed(item, unreadable.reason or "unreadable input", options, parsed.staged)
                finally:
                    parsed.release()
                yield unreadable
                continue
            if kept >= MAX_HEADERS_KEPT:
                parsed.dicom = None
            kept += 1
            studies.setdefault(parsed.instance.study_instance_uid, []).append(parsed)
        while studies:
            study_uid = next(iter(studies))
            members = studies[study_uid]
            try:
                result = _run_study_safely(study_uid, members, options)
                # run_study answers one instance entry per member, in order.
                for member, outcome in zip(members, result.instances, strict=False):
                    if outcome.status is InstanceStatus.FAILED and member.input is not None:
                        _quarantine_failed(member.input, outcome.reason or "failed", options, member.staged)
            finally:
                del studies[study_uid]
                for member in members:
                    member.release()
            yield result
    finally:
        for members in studies.values():
            for member in members:
                member.release()


def _quarantine_failed(item: InputFile | InputProblem, reason: str, options: ScreeningOptions,
                       staged: StagedInput | None = None) -> None:
    """Keep the original bytes of a failed input (a file, a zip member, or the zip it was in),
    streamed: a zip member's scratch copy (``staged``) is moved into the quarantine, a file copied
    in chunks, never read whole."""
    if options.quarantine is None:
        return
    channel = options.quarantine_channel
    if isinstance(item, InputProblem):
        if item.origin is not None and item.origin.is_file():
            options.quarantine.keep(item.origin, reason=reason, channel=channel, kind="zip")
        return
    if item.member is None:
        if item.size <= MAX_FILE_BYTES:  # one over the limit was never read: it is not copied either
            options.quarantine.keep(item.path, reason=reason, channel=channel, kind="file")
    elif staged is not None and staged.temporary and staged.path.is_file():
        options.quarantine.keep(staged.path, reason=reason, channel=channel, kind="zip member", move=True)
    elif item.path.is_file():  # a member that could not be unpacked: keep its zip
        options.quarantine.keep(item.path, reason=reason, channel=channel, kind="zip")


def _run_study_safely(study_uid: str, members: Sequence[ParsedInput], options: ScreeningOptions) -> StudyResult:
    """The boundary: an unexpected error in one study becomes that study's failed result."""
    try:
        return run_study(study_uid, members, options)
    except Exception as exc:  # noqa: BLE001 - boundary: one bad study must not stop the run
        logger.error("study %s: unexpected %s while screening", study_key(study_uid), type(exc).__name__)
        reason = f"internal error while screening ({type(exc).__name__}); the input was kept"
        return StudyResult(
            study_instance_uid=study_uid,
            status=StudyStatus.FAILED,
            reason=reason,
            instances=[InstanceResult(m.source, m.instance.sop_instance_uid if m.instance else None,
                                      InstanceStatus.FAILED, reason) for m in members],
            priority=prioritise(StudyStatus.FAILED, []),
        )


def screen_paths(paths: Sequence[Path], options: ScreeningOptions) -> Iterator[StudyResult]:
    """Screen files, folders (recursive) and zips."""
    return screen_inputs(iter_inputs(list(paths)), options)
