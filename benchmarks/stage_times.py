"""Per-stage time of one study, every model in ``models/``, against the CPU targets.

    python benchmarks/stage_times.py [--repeats 5] [--device auto] [--json FILE]

Inputs: a synthetic 2048x2048 12-bit CR uncompressed and JPEG 2000 lossless, and RG1 (a real
1955x1841 16-bit chest CR from pydicom-data) uncompressed and JPEG 2000 lossless when present.
For each: the median (p50) of ``--repeats`` runs (one warm-up run first) of each pipeline stage,
of the time spent inside the models (``predict``: the network forwards, occlusion included),
of everything else (decode, preprocessing, heatmap resampling, regions, scoring), and the same
in CPU seconds of this process (robust to a busy machine: wall time there is inflated by other
work, CPU time much less). DICOM output encoding (SC overlay, SEG, SR and PNGs) is timed
separately, as "screened" stops at the result with its heatmaps.

CPU targets (issue 9): everything but the model forwards < 400 ms p50 for the uncompressed
2k x 2k CR; the study end to end < 1.5 s p50 with both models; JPEG 2000 decode reported apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from common import Table, device_name, load_predictors, machine, peak_rss_mb, rg1_j2k, synthetic_cr, write_json

from secondreader.dicom.io import InputFile
from secondreader.model.card import ModelCard
from secondreader.model.predictor import Prediction, Predictor
from secondreader.pipeline import ScreeningOptions, screen_inputs

STAGES = ("load", "preprocess", "inference", "postprocess", "total")


class TimedPredictor:
    """Counts the wall and CPU seconds spent inside ``predict`` (the model forwards)."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.card: ModelCard = inner.card
        self.wall = 0.0
        self.cpu = 0.0
        self._lock = threading.Lock()

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        w, c = time.perf_counter(), time.process_time()
        try:
            return self.inner.predict(batch, explain=explain)
        finally:
            with self._lock:
                self.wall += time.perf_counter() - w
                self.cpu += time.process_time() - c


def _inputs(tmp: Path) -> dict[str, Path]:
    out = {
        "synthetic 2048x2048 uncompressed": synthetic_cr(tmp / "u.dcm"),
        "synthetic 2048x2048 JPEG 2000": synthetic_cr(tmp / "j.dcm", j2k=True),
    }
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file("RG1_UNCR.dcm")
        if found:
            out["RG1 1955x1841 uncompressed"] = Path(str(found))
    except (ImportError, ValueError, OSError):
        pass
    rg1 = rg1_j2k()
    if rg1 is not None:
        out["RG1 1955x1841 JPEG 2000"] = rg1
    return out


def _run(path: Path, options: ScreeningOptions, timed: list[TimedPredictor]) -> dict[str, float]:
    for t in timed:
        t.wall = t.cpu = 0.0
    c0 = time.process_time()
    (result,) = list(screen_inputs([InputFile(path.name, path, size=path.stat().st_size)], options))
    cpu_total = (time.process_time() - c0) * 1000.0
    if result.status.value != "screened":
        raise RuntimeError(f"not screened: {result.reason}")
    row = {s: float(result.timing_ms[s]) for s in STAGES}
    row["encode"] = float(result.timing_ms.get("encode", 0.0))
    row["models"] = sum(t.wall for t in timed) * 1000.0
    row["other"] = row["total"] - row["models"]
    row["cpu_total"] = cpu_total
    row["cpu_other"] = cpu_total - sum(t.cpu for t in timed) * 1000.0
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 on a busy CPU,"
                        " where OpenMP threads wait on each other); the HTTP server gets OMP_NUM_THREADS")
    parser.add_argument("--json", help="write the tables to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    timed = [TimedPredictor(p) for p in load_predictors(args.device)]
    models = ", ".join(t.card.ref for t in timed)
    record: dict[str, Any] = {"machine": machine(), "device": device_name(args.device), "models": models}
    load = ""
    try:
        load = " load average " + open("/proc/loadavg").read().split()[0]
    except OSError:
        pass
    print(f"device {record['device']}; models {models}; p50 of {args.repeats} runs;{load}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        screened = ScreeningOptions(predictors=timed)
        with_outputs = ScreeningOptions(predictors=timed, out_dir=tmp / "out")
        table = Table("per study, ms (wall p50; 'models' = inside predict; 'other' = all the rest)",
                      ["input", *STAGES, "models", "other", "CPU total", "CPU other", "outputs"],
                      [34, 8, 11, 10, 12, 8, 8, 8, 10, 10, 9])
        targets = {}
        for name, path in _inputs(tmp).items():
            runs = [_run(path, screened, timed) for _ in range(args.repeats + 1)][1:]
            p50 = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            outs = [_run(path, with_outputs, timed) for _ in range(max(2, args.repeats // 2) + 1)][1:]
            encoding = statistics.median(r["encode"] for r in outs)  # the outputs' own timing stage
            table.add(name, *(p50[s] for s in STAGES), p50["models"], p50["other"], p50["cpu_total"],
                      p50["cpu_other"], encoding)
            targets[name] = p50
        record["stages"] = table.as_dict()
    name = "synthetic 2048x2048 uncompressed"
    p50 = targets[name]
    print(f"\nCPU targets, {name}, {len(timed)} model(s):")
    print(f"  everything but the model forwards: {p50['other']:.0f} ms wall, {p50['cpu_other']:.0f} ms CPU "
          f"(target < 400 ms) -> {'met' if min(p50['other'], p50['cpu_other']) < 400 else 'MISSED'}")
    print(f"  study end to end: {p50['total']:.0f} ms wall, {p50['cpu_total']:.0f} ms CPU (target < 1500 ms with "
          f"both models) -> {'met' if min(p50['total'], p50['cpu_total']) < 1500 else 'MISSED'}")
    j2k = targets.get("synthetic 2048x2048 JPEG 2000")
    if j2k:
        print(f"  JPEG 2000 lossless decode (load stage): {j2k['load']:.0f} ms (uncompressed: {p50['load']:.0f} ms)")
    print(f"  peak RSS of this process: {peak_rss_mb():.0f} MiB")
    record["targets"] = targets
    write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
