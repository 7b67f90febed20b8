"""An audit run: index the archive, attach the reports, skip what the checkpoint already holds, run
an engine with a progress bar, and write the outputs (also after Ctrl-C, marked partial)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..model.card import load_card
from ..model.modes import ModelMode, site_modes
from .archive import DicomwebArchive, FolderArchive, StudyTask, fingerprint, is_dicomweb_url
from .checkpoint import Checkpoint
from .engines import Engine, EngineSpec, EngineStats
from .report import write_outputs
from .reports import load_reports
from .stage import StageOptions
from .summary import AuditSummary, summarise

__all__ = ["AuditConfig", "AuditOutcome", "run_audit"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Everything an audit needs, as typed values (the CLI builds it from arguments and Settings).

    ``archive``: folders/files/zips, or one DICOMweb base URL (then ``date_range`` as
    ``("YYYYMMDD", "YYYYMMDD")`` and/or ``accessions`` select the studies). ``limit``: at most this
    many new studies in this run (the rest on the next). ``fresh``: discard an earlier checkpoint.
    """

    archive: Sequence[str]
    reports: Path
    out_dir: Path
    model_dirs: Sequence[Path]
    engine: str = "local"
    device: str = "auto"
    workers: int | None = None
    include_accession: bool = False
    pictures: bool = True
    date_range: tuple[str, str] | None = None
    accessions: Sequence[str] = ()
    ray_address: str | None = None
    ray_temp_dir: Path | None = None
    limit: int | None = None
    fresh: bool = False
    progress: bool = True
    max_pixels: int = 64_000_000
    max_batch: int = 32
    secret: bytes = b""
    log_level: str = "WARNING"
    #: The site's model modes (``SECONDREADER_MODEL_MODES``); a model not named runs in its card's default.
    modes: Mapping[str, ModelMode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be local or ray, not {self.engine!r}")
        if not self.archive:
            raise ValueError("an archive is needed")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")


@dataclass(slots=True)
class AuditOutcome:
    studies: int
    new: int
    skipped: int
    complete: bool
    summary: AuditSummary
    paths: dict[str, Path]
    elapsed_s: float
    index_s: float
    engine_stats: EngineStats
    engine_s: float = 0.0  # the engine's run, start-up and shut-down included
    #: seconds from the engine's start to each finished task, in order (start-up included)
    result_times: list[float] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} studies/s" if speed else "- studies/s", style="progress.data.speed")


def _archive(config: AuditConfig) -> FolderArchive | DicomwebArchive:
    urls = [a for a in config.archive if is_dicomweb_url(a)]
    if urls:
        if len(config.archive) != 1:
            raise ValueError("a DICOMweb archive is one base URL, not mixed with paths")
        return DicomwebArchive(urls[0], date_range=config.date_range, accessions=config.accessions)
    return FolderArchive([Path(a) for a in config.archive])


def _engine(config: AuditConfig, spec: EngineSpec) -> Engine:
    if config.engine == "ray":
        from .engines.raydata import RayEngine

        temp = config.ray_temp_dir or Path(tempfile.mkdtemp(prefix="sr-ray-"))
        return RayEngine(spec, address=config.ray_address, temp_dir=temp)
    from .engines.local import LocalEngine

    return LocalEngine(spec)


def run_audit(config: AuditConfig) -> AuditOutcome:
    """Run (or resume) an audit; returns what was done. ``KeyboardInterrupt`` propagates after the
    outputs of the finished studies are written."""
    t_start = time.perf_counter()
    cards = [load_card(d) for d in config.model_dirs]
    codes = tuple(dict.fromkeys(f.code for c in cards for f in c.findings))
    refs = [c.ref for c in cards]
    modes = {name: mode.value for name, mode in site_modes(cards, config.modes).items()}
    reports = load_reports(config.reports, codes)
    archive_id = fingerprint("|".join(sorted(str(Path(a).resolve()) if not is_dicomweb_url(a) else a
                                            for a in config.archive))
                             + f"|{config.date_range}|{sorted(config.accessions)}")
    meta = {"format": 1, "models": refs, "reports": reports.fingerprint, "archive": archive_id,
            "include_accession": config.include_accession, "pictures": config.pictures, "modes": modes}
    checkpoint = Checkpoint(config.out_dir, meta, fresh=config.fresh)
    t0 = time.perf_counter()
    tasks = list(_archive(config).tasks())
    index_s = time.perf_counter() - t0
    todo = [t.with_report(reports.lookup(t.study_instance_uid, t.accession_number))
            for t in tasks if t.key not in checkpoint]
    skipped = len(tasks) - len(todo)
    complete = True
    if config.limit is not None and len(todo) > config.limit:
        todo, complete = todo[: config.limit], False
    logger.info("audit: %d studies or inputs, %d already done, %d to do (%d reports, %d unusable report rows)",
                len(tasks), skipped, len(todo), len(reports), len(reports.problems))

    spool = Path(tempfile.mkdtemp(prefix="secondreader-audit-spool-"))
    stage = StageOptions(images_dir=(config.out_dir / "images").resolve() if config.pictures else None,
                         spool_dir=spool, max_pixels=config.max_pixels, modes=modes)
    spec = EngineSpec(model_dirs=tuple(config.model_dirs), stage=stage, device=config.device,
                      workers=config.workers or os.cpu_count() or 1, max_batch=config.max_batch,
                      secret=config.secret, log_level=config.log_level)
    engine = _engine(config, spec)
    new = 0
    progress = Progress(TextColumn("audit"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=Console(stderr=True), disable=not config.progress, transient=False)
    bar = progress.add_task("audit", total=len(todo))

    result_times: list[float] = []

    def on_result(task: StudyTask, rows: list[dict[str, Any]]) -> None:
        nonlocal new
        result_times.append(time.perf_counter() - t_engine)
        if not config.include_accession:
            for row in rows:
                row["accession_number"] = None
        checkpoint.append(task.key, rows)
        new += 1
        progress.advance(bar)

    interrupted = False
    t_engine = time.perf_counter()
    try:
        with progress:
            if todo:
                engine.run(todo, on_result)
    except KeyboardInterrupt:
        interrupted = True
        complete = False
        logger.warning("audit interrupted: %d studies done in this run are kept; rerun to finish", new)
    finally:
        engine_s = time.perf_counter() - t_engine
        checkpoint.reload()
        shutil.rmtree(spool, ignore_errors=True)
    rows = checkpoint.rows()
    summary = summarise(rows, codes)
    paths = write_outputs(config.out_dir, rows, summary, codes, include_accession=config.include_accession,
                          models=[f"{ref} ({modes[c.name]})" for ref, c in zip(refs, cards, strict=True)],
                          complete=complete)
    outcome = AuditOutcome(studies=len(tasks), new=new, skipped=skipped, complete=complete, summary=summary,
                           paths=paths, elapsed_s=time.perf_counter() - t_start, index_s=index_s,
                           engine_stats=engine.stats, engine_s=engine_s,
                           result_times=result_times, rows=rows)
    if interrupted:
        raise KeyboardInterrupt
    return outcome
