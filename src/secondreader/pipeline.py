"""The one code path from DICOM inputs to study results; the CLI, the service, the DICOM receiver
and the audit all call it. This is the only module that knows the order of the steps:

read header → eligibility → decode (Modality LUT, VOI) → window/invert → crop/resize/normalise →
predict (+ GradCAM) → calibrate → heatmap on the source grid → regions → priority
(:func:`screen_study`, which writes no file), then the overlays and DICOM outputs, which
:mod:`secondreader.outputs.writer` writes before the result is returned, or the caller after it
(``defer_outputs``); a failed input's bytes go to the quarantine.

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
from typing import NamedTuple

import numpy as np
import torch
from pydicom.dataset import Dataset

from .dicom.eligibility import Eligibility, evaluate
from .dicom.instance import CxrInstance
from .dicom.io import (
    DicomFile,
    InputFile,
    InputProblem,
    StagedInput,
    drop_deferred,
    iter_inputs,
    quarantine_input,
    read_dataset,
)
from .dicom.pixels import decode_display
from .errors import CorruptPixelDataError, ProcessingError, SecondReaderError
from .explain.heatmap import heatmap_on_source
from .explain.regions import Region, extract_regions
from .logsafe import study_key
from .model.card import ModelCard, check_shared_findings
from .model.dense import dense_regions
from .model.modes import ModelMode
from .model.predictor import Predictor
from .outputs.provenance import SeriesSettings
from .outputs.writer import ScreenedFrame, StudyOutputs
from .preprocessing import GeometryRecord, prepare_frame, window_frame
from .quarantine import Quarantine
from .results import InstanceResult, InstanceStatus, RegionResult, StudyResult
from .scoring.priority import FindingResult, Priority, Route, StudyStatus, finding_score, prioritise

__all__ = ["ParsedInput", "ScreenedStudy", "ScreeningOptions", "StudyOutputs", "display_frames", "parse_input",
           "run_study", "screen_inputs", "screen_paths", "screen_pixels", "screen_study"]

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


@dataclass(frozen=True, slots=True)
class _Frame:
    """One decoded frame: in display units (``windowed``, ``invert``: what windowing it still needs)
    until :func:`_prepare` windows it."""

    sop_instance_uid: str
    frame: int
    display: np.ndarray
    spacing_mm: tuple[float, float] | None
    windowed: bool
    invert: bool
    dataset: Dataset | None = None
    #: Models whose scope leaves this frame's instance out: model reference → the reason.
    out_of_scope: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Scores:
    """What the models gave one frame: a calibrated probability, and a heatmap on the source grid
    (when explained), per finding code."""

    probabilities: dict[str, float] = field(default_factory=dict)
    heat: dict[str, np.ndarray] = field(default_factory=dict)


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


def _decode_frames(parsed: ParsedInput, max_pixels: int, out_of_scope: dict[str, str] | None = None) -> list[_Frame]:
    """Decode one instance to its frames in display units (not yet windowed), from the header
    :func:`parse_input` read: only the pixel data is read now, once. ``out_of_scope``: the models
    whose scope leaves the instance out (see :func:`scope_reasons`)."""
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
    scope = out_of_scope if out_of_scope is not None else {}
    return [
        _Frame(sop, index + 1, frame, parsed.instance.pixel_spacing_mm, windowed=image.windowed, invert=image.invert,
               dataset=dicom.dataset if index == 0 else None, out_of_scope=scope)
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


class _Intake(NamedTuple):
    """Step 1's answer: one outcome per member (in order), the frames of those to screen, where
    each screened instance's bytes are, and the seconds spent decoding."""

    instances: list[InstanceResult]
    frames: list[_Frame]
    files: dict[str, tuple[str, str | None]]
    load_s: float


def _refusal(parsed: ParsedInput, handled: set[str]) -> InstanceResult | None:
    """Why a member is not decoded (a SOP Instance UID already screened or refused, ineligible,
    no SOP Instance UID), or None."""
    inst, eligibility = parsed.instance, parsed.eligibility
    assert inst is not None and eligibility is not None
    sop = inst.sop_instance_uid
    if sop is not None and sop in handled:
        return InstanceResult(parsed.source, sop, InstanceStatus.DUPLICATE,
                              "SOP Instance UID already seen in this study")
    if not eligibility.ok:
        return InstanceResult(parsed.source, sop, InstanceStatus.INELIGIBLE, eligibility.reason, eligibility.rule_ids)
    if sop is None:
        return InstanceResult(parsed.source, None, InstanceStatus.FAILED, "SOP Instance UID missing")
    return None


def _take_in(members: Sequence[ParsedInput], max_pixels: int, running: Sequence[Predictor]) -> _Intake:
    """Step 1, decode and eligibility: each member refused (duplicate, ineligible) or decoded to its
    frames, each frame knowing which models leave its instance out."""
    instances: list[InstanceResult] = []
    frames: list[_Frame] = []
    files: dict[str, tuple[str, str | None]] = {}
    load_s = 0.0
    handled: set[str] = set()  # SOP Instance UIDs already screened or refused
    for parsed in members:
        refusal = _refusal(parsed, handled)
        if refusal is not None:
            instances.append(refusal)
            if refusal.status is InstanceStatus.INELIGIBLE and refusal.sop_instance_uid:
                handled.add(refusal.sop_instance_uid)
            continue
        assert parsed.instance is not None and parsed.instance.sop_instance_uid is not None
        sop = parsed.instance.sop_instance_uid
        out_of_scope = scope_reasons(parsed.instance, running)
        t0 = time.perf_counter()
        try:
            decoded = _decode_frames(parsed, max_pixels, out_of_scope)
        except SecondReaderError as exc:
            instances.append(InstanceResult(parsed.source, sop, InstanceStatus.FAILED, str(exc)))
            continue
        except OSError as exc:
            instances.append(InstanceResult(parsed.source, sop, InstanceStatus.FAILED,
                                            f"file cannot be read ({exc.strerror or 'I/O error'})"))
            continue
        finally:
            load_s += time.perf_counter() - t0
        frames.extend(decoded)
        handled.add(sop)
        instances.append(InstanceResult(parsed.source, sop, InstanceStatus.SCREENED,
                                        not_applicable=_codes_out_of_scope(out_of_scope, running)))
        if parsed.input is not None:
            files[sop] = (str(parsed.input.path), parsed.input.member)
    return _Intake(instances, frames, files, load_s)


#: One model's input: the indices of the frames in its scope, their tensors, their geometry.
_Batch = tuple[list[int], torch.Tensor, list[GeometryRecord]]


def _prepare(frames: Sequence[_Frame], predictors: Sequence[Predictor]) -> tuple[list[_Frame], list[_Batch | None]]:
    """Step 2: window/invert each frame, then build each model's input batch from the windowed
    frames in its scope (``None``: the model applies to none of them and will not run)."""
    windowed = [replace(f, display=window_frame(f.display, windowed=f.windowed, invert=f.invert),
                        windowed=True, invert=False) for f in frames]
    batches: list[_Batch | None] = []
    for predictor in predictors:
        mine = [i for i, f in enumerate(windowed) if predictor.card.ref not in f.out_of_scope]
        if not mine:
            batches.append(None)
            continue
        prepared = [prepare_frame(windowed[i].display, predictor.card.input_spec) for i in mine]
        batches.append((mine, torch.stack([t for t, _ in prepared]), [g for _, g in prepared]))
    return windowed, batches


def _join_scope_reasons(frames: Iterable[_Frame], ref: str) -> str:
    return "; ".join(dict.fromkeys(f.out_of_scope[ref] for f in frames if ref in f.out_of_scope)) or "out of scope"


def _predict(
    frames: Sequence[_Frame],
    predictors: Sequence[Predictor],
    batches: Sequence[_Batch | None],
    explain: bool,
    modes: Sequence[ModelMode],
) -> tuple[list[FindingResult], list[_Scores]]:
    """Step 3: run every model over the frames in its scope. Returns the study's findings (not
    applicable, with the reason, for a model whose scope holds none), and each frame's scores."""
    findings: list[FindingResult] = []
    scores = [_Scores() for _ in frames]
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
            for index, geometry, prediction in zip(mine, geometries, predictions, strict=True):
                p = float(spec.calibration.probability(prediction.logits[k]))
                scores[index].probabilities[spec.code] = p
                probs.append(p)
                if prediction.saliency is not None:
                    scores[index].heat[spec.code] = heatmap_on_source(prediction.saliency[k], geometry)
            findings.append(
                FindingResult(spec.code, max(probs), spec.operating_point, spec.urgent_point, card.ref,
                              mode=mode.value)
            )
    return findings, scores


def _screened_frames(frames: Sequence[_Frame], scores: Sequence[_Scores]) -> list[ScreenedFrame]:
    return [ScreenedFrame(f.sop_instance_uid, f.frame, f.display, f.spacing_mm, f.dataset, s.probabilities, s.heat,
                          f.out_of_scope) for f, s in zip(frames, scores, strict=True)]


def _regions(frames: Sequence[ScreenedFrame], findings: list[FindingResult],
             predictors: Sequence[Predictor] = ()) -> list[RegionResult]:
    """Step 4: regions of every positive finding, on each frame where that finding is positive. A dense
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


def screen_pixels(display: np.ndarray, predictors: Sequence[Predictor],
                  modes: Mapping[str, ModelMode] | None = None) -> list[FindingResult]:
    """Screen a picture that is already windowed (float32 (rows, cols) in [0, 1], bright bone),
    such as a PNG export: steps 3–5 and the models, no DICOM. Returns calibrated findings.

    A picture has no header: its view, modality and body part count as unknown (accepted), and so
    does the patient's age, which each model's scope decides (``unknown_age``). ``modes`` as
    :attr:`ScreeningOptions.modes`; ``off`` models do not run."""
    options = ScreeningOptions(predictors=predictors, modes=modes or {})
    running = options.running()
    frames, batches = _prepare([_Frame("", 1, np.asarray(display, dtype=np.float32), None, windowed=True,
                                       invert=False, out_of_scope=scope_reasons(None, running))], running)
    findings, _ = _predict(frames, running, batches, explain=False, modes=[options.mode_of(p.card) for p in running])
    return merge_shared_findings(findings)


@dataclass(frozen=True, slots=True)
class ScreenedStudy:
    """One study screened, nothing written: its result (``artifacts`` "none"; ``timing_ms`` without
    ``total`` and ``encode``) and the frames its outputs are made of (none unless it was screened)."""

    result: StudyResult
    frames: list[ScreenedFrame]


def _model_failed(instances: Sequence[InstanceResult]) -> list[InstanceResult]:
    """The instances once inference failed: every screened one failed with it."""
    failed = "the model could not process this image"
    return [InstanceResult(i.source, i.sop_instance_uid, InstanceStatus.FAILED, failed)
            if i.status is InstanceStatus.SCREENED else i for i in instances]


def _study_status(instances: Sequence[InstanceResult]) -> tuple[StudyStatus, str | None]:
    """Step 5: the study's status (screened when any instance was) and, when not screened, why."""
    statuses = {i.status for i in instances}
    if InstanceStatus.SCREENED in statuses:
        return StudyStatus.SCREENED, None
    if InstanceStatus.FAILED in statuses:
        return StudyStatus.FAILED, _join_reasons(i.reason for i in instances if i.status is InstanceStatus.FAILED)
    return StudyStatus.INELIGIBLE, _join_reasons(i.reason for i in instances if i.status is InstanceStatus.INELIGIBLE)


def screen_study(study_uid: str, members: Sequence[ParsedInput], options: ScreeningOptions) -> ScreenedStudy:
    """Screen one study's instances (already parsed, in arrival order); no file is written."""
    running = options.running()
    timing = {"load": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}  # seconds
    instances, frames, files, timing["load"] = _take_in(members, options.max_pixels, running)
    findings: list[FindingResult] = []
    regions: list[RegionResult] = []
    screened: list[ScreenedFrame] = []
    if frames:
        t0 = time.perf_counter()
        frames, batches = _prepare(frames, running)
        timing["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            found, scores = _predict(frames, running, batches, options.explain,
                                     [options.mode_of(p.card) for p in running])
            findings, screened = merge_shared_findings(found), _screened_frames(frames, scores)
        except (ProcessingError, RuntimeError) as exc:
            logger.error("study %s: inference failed (%s)", study_key(study_uid), type(exc).__name__)
            instances = _model_failed(instances)
        timing["inference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        regions = _regions(screened, findings, running) if screened else []
        timing["postprocess"] = time.perf_counter() - t0

    status, reason = _study_status(instances)
    if status is not StudyStatus.SCREENED:
        findings, regions, screened = [], [], []
    result = StudyResult(
        study_instance_uid=study_uid,
        status=status,
        reason=reason,
        instances=instances,
        priority=prioritise(status, findings),
        findings=findings,
        regions=regions,
        models=options.models_json(),
        timing_ms={stage: seconds * 1000.0 for stage, seconds in timing.items()},
        files=files if status is StudyStatus.SCREENED else {},
        modality=next((m.instance.modality for m in members if m.instance is not None and m.instance.modality), None),
        accession_number=next((m.instance.accession_number for m in members
                               if m.instance is not None and m.instance.accession_number), None),
    )
    return ScreenedStudy(result, screened)


def run_study(study_uid: str, members: Sequence[ParsedInput], options: ScreeningOptions) -> StudyResult:
    """Screen one study's instances (already parsed, in arrival order: :func:`screen_study`), then
    have its overlays and DICOM outputs written into ``options.out_dir`` (when set), or, with
    ``defer_outputs``, listed as planned and left to the caller (``StudyResult.outputs``)."""
    t_start = time.perf_counter()
    screened = screen_study(study_uid, members, options)
    result = screened.result
    encode_ms = 0.0  # outputs written here (not deferred), in ms
    if screened.frames and options.out_dir is not None:
        outputs = StudyOutputs(study_uid, screened.frames, result.findings, result.regions, result.priority,
                               options.out_dir, models=tuple(p.card for p in options.running()),
                               series=options.series, dicom_outputs=options.dicom_outputs)
        if options.defer_outputs:
            heatmaps, dicom = outputs.planned()
            result = replace(result, heatmaps=heatmaps, dicom=dicom, artifacts_status="pending", outputs=outputs)
        else:
            written = outputs.write()
            result = replace(result, heatmaps=written.heatmaps, dicom=written.dicom, artifacts_status=written.status)
            encode_ms = written.encode_ms
    result.timing_ms["total"] = (time.perf_counter() - t_start) * 1000.0
    result.timing_ms["encode"] = encode_ms
    logger.info("study %s %s score=%d route=%s rule=%s instances=%d total_ms=%.0f",
                study_key(study_uid), result.status.value, result.priority.score, result.priority.route.value,
                result.priority.rule, len(result.instances), result.timing_ms["total"])
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
                    _keep_failed(item, unreadable.reason or "unreadable input", options, parsed.staged)
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
                        _keep_failed(member.input, outcome.reason or "failed", options, member.staged)
            finally:
                del studies[study_uid]
                for member in members:
                    member.release()
            yield result
    finally:
        for members in studies.values():
            for member in members:
                member.release()


def _keep_failed(item: InputFile | InputProblem, reason: str, options: ScreeningOptions,
                 staged: StagedInput | None = None) -> None:
    """Quarantine a failed input's original bytes, when the run keeps them."""
    if options.quarantine is not None:
        quarantine_input(options.quarantine, item, reason=reason, channel=options.quarantine_channel, staged=staged)


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
