"""Audit throughput in one run: ``secondreader audit`` with the local engine and with Ray Data, on
the same archive, against the pipeline in one process, with a per-stage breakdown.

    python benchmarks/audit_throughput.py [--studies 40] [--kind uncompressed|j2k] [--workers N]
                                          [--engines local ray] [--device auto] [--json FILE]

Ray starts only inside a private network namespace (it listens on every interface):

    unshare -n -- bash -c 'ip link set lo up; . .venv/bin/activate; python benchmarks/audit_throughput.py'

Inputs: synthetic 2048x2048 12-bit chest CRs (one instance per study), uncompressed or JPEG 2000
lossless. The model calls them all positive; ``--discordant-fraction`` of the reports (default 5%,
an audit should flag few) negate pneumonia, so those studies are discordant and get their heatmap
pictures (a second pass with saliency, the costliest path); the others report it. Every bundle in
``models/`` is used.

Tables: studies/s end to end (start-up included) and in the steady state (the studies over the
window in which workers or actors were screening, by the clock where they ran), the rest of the
run as start-up and shut-down seconds,
with the ratio to the in-process pipeline (one process; torch's default intra-op threads, and one
thread, which is faster on a busy 2-core machine); mean milliseconds per study in each stage (as the
workers measured them: ``inference`` in the local engine includes the trip to the main process and
the wait for a batch); mean model batch size. Compare ratios from one run, not figures from
different runs: the machine may be noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import Table, bundles, load_predictors, machine, synthetic_cr, write_json

from secondreader.audit.report import TIMING_STAGES
from secondreader.audit.run import AuditConfig, AuditOutcome, run_audit
from secondreader.pipeline import ScreeningOptions, screen_paths


def in_private_network_namespace() -> bool:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return {line.split(":", 1)[0].strip() for line in lines if ":" in line} <= {"lo"}


def build(root: Path, studies: int, kind: str, discordant_fraction: float) -> tuple[Path, Path]:
    archive = root / "archive"
    archive.mkdir(parents=True)
    uids = []
    for i in range(studies):
        path = synthetic_cr(archive / f"cr{i:04d}.dcm", seed=i, j2k=kind == "j2k")
        import pydicom

        uids.append(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    reports = root / "reports.csv"
    every = max(1, round(1 / discordant_fraction)) if discordant_fraction > 0 else 0
    texts = ["No focal consolidation." if every and i % every == 0 else "Right lower lobe consolidation."
             for i in range(len(uids))]
    lines = "".join(f"{u},{t}\n" for u, t in zip(uids, texts, strict=True))
    reports.write_text("study_instance_uid,report_text\n" + lines)
    return archive, reports


def pipeline_rate(archive: Path, device: str, threads: int | None) -> float:
    """The pipeline in this process (no pictures), with torch's default intra-op threads or ``threads``."""
    default = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        predictors = load_predictors(device)
        options = ScreeningOptions(predictors, explain=False)
        list(screen_paths([next(archive.iterdir())], options))  # warm up
        t0 = time.perf_counter()
        count = sum(1 for _ in screen_paths([archive], options))
        return count / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(default)


def audit(engine: str, archive: Path, reports: Path, out: Path, args: argparse.Namespace) -> AuditOutcome:
    config = AuditConfig(archive=[str(archive)], reports=reports, out_dir=out, model_dirs=bundles(), engine=engine,
                         device=args.device, workers=args.workers, progress=False,
                         ray_temp_dir=Path(tempfile.mkdtemp(prefix="sr-ray-")) if engine == "ray" else None)
    return run_audit(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--kind", choices=["uncompressed", "j2k"], default="uncompressed")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engines", nargs="+", choices=["local", "ray"], default=["local", "ray"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--discordant-fraction", type=float, default=0.05,
                        help="share of reports that negate pneumonia (the AI calls every synthetic CR positive, "
                             "so these studies are discordant and get pictures)")
    parser.add_argument("--json", help="also write the tables here")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    root = Path(tempfile.mkdtemp(prefix="sr-audit-bench-"))
    try:
        archive, reports = build(root, args.studies, args.kind, args.discordant_fraction)
        print(f"{args.studies} studies, 2048x2048 CR {args.kind}, {args.workers} workers, models "
              f"{', '.join(b.name for b in bundles())}")
        default_threads = torch.get_num_threads()
        baseline_default = pipeline_rate(archive, args.device, None)
        baseline = pipeline_rate(archive, args.device, 1)
        outcomes: dict[str, AuditOutcome] = {}
        for engine in args.engines:
            if engine == "ray" and not in_private_network_namespace():
                print("ray: skipped (run inside `unshare -n`: Ray listens on every interface)")
                continue
            outcomes[engine] = audit(engine, archive, reports, root / f"out-{engine}", args)
        throughput = Table("Throughput (studies/s)", ["engine", "studies", "seconds", "end-to-end", "start-up s",
                                                      "steady", "steady/pipeline", "discordant", "mean batch"])
        throughput.add(f"pipeline, {default_threads} torch threads", args.studies, args.studies / baseline_default,
                       baseline_default, None, baseline_default, baseline_default / baseline, None, None)
        throughput.add("pipeline, 1 torch thread", args.studies, args.studies / baseline, baseline, None, baseline,
                       1.0, None, None)
        for engine, outcome in outcomes.items():
            # Steady state: studies over the window in which the workers or actors were screening
            # (first study started to last finished, by the clock where they ran); start-up is the rest.
            clocks = [r["clock"] for r in outcome.rows if "clock" in r]
            window = max(c[1] for c in clocks) - min(c[0] for c in clocks) if clocks else 0.0
            steady = len(clocks) / window if window > 0 else None
            throughput.add(f"audit {engine}", outcome.new, outcome.elapsed_s, outcome.new / outcome.elapsed_s,
                           outcome.elapsed_s - window, steady, steady / baseline if steady else None,
                           outcome.summary.discordance.count, outcome.engine_stats.mean_batch or None)
        stages = Table("Mean ms per study by stage", ["engine", *TIMING_STAGES])
        for engine, outcome in outcomes.items():
            means: list[Any] = []
            for stage in TIMING_STAGES:
                values = [float(r["timing_ms"][stage]) for r in outcome.rows if stage in r["timing_ms"]]
                means.append(sum(values) / len(values) if values else None)
            stages.add(engine, *means)
        write_json(args.json, {"machine": machine(), "tables": [throughput.as_dict(), stages.as_dict()]})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
