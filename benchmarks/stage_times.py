"""Per-stage time of one study (load, preprocess, inference, postprocess) for real CRs.

    python benchmarks/stage_times.py [--repeats 5] [--device auto] [--overlays]

Inputs: RG1 (a real 1955x1841 16-bit chest CR from pydicom-data) uncompressed and JPEG 2000
lossless, and a synthetic 2048x2048 12-bit CR. Prints the median of ``--repeats`` runs per stage
(first run discarded as warm-up) and the share of each stage in the total.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from common import synthetic_cr
from pydicom.data import get_testdata_file

from secondreader.config import default_models_dir
from secondreader.dicom.io import InputFile
from secondreader.model.predictor import TorchPredictor
from secondreader.pipeline import ScreeningOptions, screen_inputs

STAGES = ("load", "preprocess", "inference", "postprocess", "total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overlays", action="store_true", help="also write PNG overlays (postprocess)")
    args = parser.parse_args()

    predictor = TorchPredictor.from_bundle(default_models_dir() / "cxr-pneumonia", device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {
            "RG1 CR 1955x1841 uncompressed": Path(str(get_testdata_file("RG1_UNCR.dcm"))),
            "RG1 CR 1955x1841 JPEG 2000 lossless": Path(str(get_testdata_file("RG1_J2KR.dcm"))),
            "synthetic CR 2048x2048 uncompressed": synthetic_cr(Path(tmp) / "cr2048.dcm"),
        }
        options = ScreeningOptions(predictors=[predictor], out_dir=Path(tmp) / "out" if args.overlays else None)
        print(f"device {predictor.device}, model {predictor.card.ref}, median of {args.repeats} runs (ms)")
        print(f"{'input':<38}" + "".join(f"{s:>12}" for s in STAGES))
        for name, path in inputs.items():
            item = InputFile(path.name, path, size=path.stat().st_size)
            runs = []
            for _ in range(args.repeats + 1):
                (result,) = list(screen_inputs([item], options))
                assert result.status.value == "screened", result.reason
                runs.append(result.timing_ms)
            runs = runs[1:]
            medians = {s: statistics.median(r[s] for r in runs) for s in STAGES}
            print(f"{name:<38}" + "".join(f"{medians[s]:>12.1f}" for s in STAGES))
            shares = ", ".join(f"{s} {100 * medians[s] / medians['total']:.0f}%" for s in STAGES[:-1])
            print(f"{'':<38}{shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
