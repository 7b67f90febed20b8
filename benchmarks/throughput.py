"""Throughput in one run: the raw model loop, the pipeline in-process, and the HTTP service.

    python benchmarks/throughput.py [--studies 24] [--concurrency 1 4 16] [--device auto]

Input: synthetic 2048x2048 12-bit chest CRs (uncompressed), the same bytes for every stage. Prints
images/s of the bare network (with and without the occlusion heatmap), studies/s of the pipeline
in-process and of ``secondreader serve`` under concurrency (with p50/p95/p99 latency), and the
ratios between them. The machine is noisy: compare ratios from one run, not absolute figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from common import synthetic_cr

from secondreader.config import default_models_dir
from secondreader.dicom.io import InputFile
from secondreader.model.predictor import TorchPredictor
from secondreader.pipeline import ScreeningOptions, screen_inputs


def _raw(predictor: TorchPredictor, explain: bool, batch: int, seconds: float = 3.0) -> float:
    x = torch.randn(batch, 1, *predictor.card.input_spec.size)
    predictor.predict(x, explain=explain)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.predict(x, explain=explain)
        n += batch
    return n / (time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(files: list[Path], concurrency: int, base: str, key: str) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/dicom"}
    bodies = [f.read_bytes() for f in files]

    def one(body: bytes) -> float:
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/screen?wait=300", content=body, headers=headers, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        return time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, bodies))
    return len(bodies) / (time.perf_counter() - start), latencies


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    predictor = TorchPredictor.from_bundle(default_models_dir() / "cxr-pneumonia", device=args.device)
    print(f"device {predictor.device}, model {predictor.card.ref}, torch threads {torch.get_num_threads()}")
    print("\nraw model loop (28x28 inputs)            images/s")
    raw = {}
    for explain in (False, True):
        for batch in (1, 8, 32):
            raw[(explain, batch)] = _raw(predictor, explain, batch)
            label = f"batch {batch:>2}, {'with occlusion heatmap' if explain else 'logits only'}"
            print(f"  {label:<38} {raw[(explain, batch)]:>10.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        files = [synthetic_cr(Path(tmp) / f"{i}.dcm", i) for i in range(args.studies)]
        options = ScreeningOptions(predictors=[predictor])
        start = time.perf_counter()
        for f in files:
            (result,) = list(screen_inputs([InputFile(f.name, f, size=f.stat().st_size)], options))
            assert result.status.value == "screened"
        pipeline = len(files) / (time.perf_counter() - start)
        print(f"\npipeline in-process, 2048x2048 CR        studies/s {pipeline:>8.2f}")
        with_overlays = ScreeningOptions(predictors=[predictor], out_dir=Path(tmp) / "overlays")
        start = time.perf_counter()
        for f in files:
            list(screen_inputs([InputFile(f.name, f, size=f.stat().st_size)], with_overlays))
        pipeline_png = len(files) / (time.perf_counter() - start)
        print(f"  + PNG overlays written (as the service)          {pipeline_png:>8.2f}")

        home = Path(tmp) / "home"
        port, key = _free_port(), "bench-key"
        env = {**os.environ, "SECONDREADER_HOME": str(home), "SECONDREADER_API_KEYS": key,
               "SECONDREADER_DEVICE": args.device, "SECONDREADER_DICOM_PORT": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "secondreader.cli", "--log-level", "WARNING", "serve",
                                 "--port", str(port), "--no-samples"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"secondreader serve exited with {proc.returncode}")
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            _http(files[:2], 1, base, key)  # warm-up
            print("\nHTTP service (secondreader serve)        studies/s   p50 ms   p95 ms   p99 ms   "
                  "service/pipeline+png")
            for concurrency in args.concurrency:
                rate, lat = _http(files, concurrency, base, key)
                print(f"  concurrency {concurrency:>3}                          {rate:>8.2f} {_pct(lat, 50):>8.0f} "
                      f"{_pct(lat, 95):>8.0f} {_pct(lat, 99):>8.0f}   {rate / pipeline_png:>8.2f}")
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)
    per_image = raw[(True, 1)]
    print(f"\npipeline studies/s / raw model images/s (batch 1, with heatmap): {pipeline / per_image:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
