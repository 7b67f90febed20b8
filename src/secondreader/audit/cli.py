"""``secondreader audit ARCHIVE --reports FILE --out DIR [--engine local|ray]`` (contract 1).

Prints one summary line on stdout when done; the progress bar and logs go to stderr. Exit code 0
when every study got a row (screened, ineligible or failed), 2 on a usage error, 130 after Ctrl-C
(the finished studies are kept; rerun the same command to finish).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InvalidInputError

__all__ = ["add_parser", "command"]

logger = logging.getLogger("secondreader.audit")

_DATE = re.compile(r"^\d{8}$")


def add_parser(sub: Any) -> None:
    audit = sub.add_parser(
        "audit", help="audit an archive against its signed reports (CSV, Parquet and HTML report)",
        description="Screen every study of an archive, compare with the signed reports and list the studies "
                    "where the AI finds something the report negates or does not mention.")
    audit.add_argument("archive", nargs="+", metavar="ARCHIVE",
                       help="DICOM files, folders (recursive) or zips; or one DICOMweb base URL")
    audit.add_argument("--reports", type=Path, required=True, metavar="FILE",
                       help="CSV (study_instance_uid or accession_number; report_text or per-finding labels) "
                            "or a file of HL7 v2 ORU messages")
    audit.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="audit.csv, audit.parquet, index.html and the checkpoint go here")
    audit.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: worker processes + the model batched in this process; ray: Ray Data")
    audit.add_argument("--workers", type=int, help="decoding processes (local) or CPUs of a local Ray "
                                                   "(default: all CPU cores)")
    audit.add_argument("--ray-address", help="an existing Ray cluster (default: start a local Ray)")
    audit.add_argument("--ray-temp-dir", type=Path, help="Ray's temporary folder (default: a new one in $TMPDIR)")
    audit.add_argument("--from", dest="date_from", metavar="YYYYMMDD", help="DICOMweb: first Study Date")
    audit.add_argument("--to", dest="date_to", metavar="YYYYMMDD", help="DICOMweb: last Study Date")
    audit.add_argument("--accessions", type=Path, metavar="FILE",
                       help="DICOMweb: a file of accession numbers, one a line")
    audit.add_argument("--include-accession-numbers", action="store_true",
                       help="write accession numbers into the outputs (left out by default)")
    audit.add_argument("--no-pictures", action="store_true",
                       help="no heatmap overlays or thumbnails for the discordant studies")
    audit.add_argument("--limit", type=int, help="audit at most N new studies in this run")
    audit.add_argument("--fresh", action="store_true", help="discard an earlier checkpoint in DIR")
    audit.add_argument("--no-progress", action="store_true", help="no progress bar")
    audit.add_argument("--model", action="append", default=[], metavar="NAME",
                       help="model bundle under the models folder (repeatable; default all)")
    audit.add_argument("--models-dir", type=Path, help="models folder (default SECONDREADER_MODELS_DIR)")
    audit.add_argument("--device", help="auto, cpu, cuda or cuda:N (default SECONDREADER_DEVICE)")
    audit.set_defaults(func=command)


def command(args: argparse.Namespace, settings: Settings) -> int:
    from ..model.card import bundle_dirs
    from .run import AuditConfig, run_audit

    date_range = None
    if args.date_from or args.date_to:
        if not (args.date_from and args.date_to and _DATE.match(args.date_from) and _DATE.match(args.date_to)):
            logger.error("--from and --to go together, each as YYYYMMDD")
            return 2
        date_range = (args.date_from, args.date_to)
    accessions: list[str] = []
    if args.accessions is not None:
        try:
            accessions = [line.strip() for line in args.accessions.read_text().splitlines() if line.strip()]
        except OSError:
            logger.error("--accessions file cannot be read")
            return 2
    try:
        config = AuditConfig(
            archive=list(args.archive), reports=args.reports, out_dir=args.out,
            model_dirs=bundle_dirs(args.models_dir or settings.models_dir, args.model), engine=args.engine,
            device=args.device or settings.device, workers=args.workers,
            include_accession=args.include_accession_numbers, pictures=not args.no_pictures, date_range=date_range,
            accessions=accessions, ray_address=args.ray_address, ray_temp_dir=args.ray_temp_dir, limit=args.limit,
            fresh=args.fresh, progress=not args.no_progress, max_pixels=settings.max_image_pixels,
            secret=settings.resolved_secret(), log_level=args.log_level, modes=settings.resolved_model_modes(),
        )
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    try:
        outcome = run_audit(config)
    except InvalidInputError as exc:
        logger.error("%s", exc)
        return 2
    s = outcome.summary
    rate = s.discordance
    lo, hi = rate.interval
    state = "complete" if outcome.complete else "partial (rerun to continue)"
    sys.stdout.write(
        f"audit {state}: {s.studies} studies ({outcome.new} new, {outcome.skipped} already done), "
        f"{s.screened} screened, {s.ineligible} ineligible, {s.failed} failed, {len(s.bad_files)} bad files; "
        f"discordant {rate.count}/{rate.total}"
        + (f" = {100 * rate.count / rate.total:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)" if rate.total else "")
        + f" -> {outcome.paths['html']}\n")
    return 0
