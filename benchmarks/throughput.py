"""Throughput in one run: the raw networks, JPEG 2000 decoding, the pipeline in-process and the
HTTP service, on the same inputs and device, with the ratios between them.

    python benchmarks/throughput.py [--device auto] [--sections raw decode pipeline http]
                                    [--concurrency 1 4 16 64] [--studies 32] [--seconds 2]
                                    [--compile] [--json FILE]

Inputs: synthetic 2048x2048 12-bit chest CRs, uncompressed and JPEG 2000 lossless (the same
pictures), and the real RG1 CR (JPEG 2000 lossless) for decoding when pydicom-data has it. Every
bundle in ``models/`` is used (cxr-pneumonia; cxr-nodule once it is trained).

Tables: raw images/s of each bare network by batch size and precision (logits only), and with
the heatmap the service asks for; JPEG 2000 decode images/s on the CPU (1 process and one per
core) and on the GPU (nvImageCodec, batched); pipeline studies/s (one thread, and one thread per
service worker sharing batched models); HTTP studies/s of ``secondreader serve`` at each
concurrency with p50/p95/p99 latency of the answer, and studies/s until the overlays and DICOM
outputs (written after the answer) exist too; peak RSS and GPU memory; service/raw ratios. The machine
may be noisy: compare ratios from one run, not figures from different runs.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import multiprocessing
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import pydicom
import torch
from common import (
    Table,
    device_name,
    gpu_peak_mb,
    load_predictors,
    machine,
    pct,
    peak_rss_mb,
    rate,
    rg1_j2k,
    synthetic_cr,
    wait_until_ready,
    write_json,
)
from pydicom.encaps import generate_frames

from secondreader.dicom import gpu_decode
from secondreader.dicom.io import InputFile
from secondreader.model.batcher import BatchingPredictor
from secondreader.model.predictor import Predictor, TorchPredictor, resolve_device
from secondreader.pipeline import ScreeningOptions, screen_inputs

WORKERS = 4  # the service's screening threads (service/bento.py)


def _guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(...)``, or ``None`` (the error printed) when it fails: one failing variant (a
    compiler missing on the machine, say) must not cost the rest of the run."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        print(f"  ({getattr(fn, '__name__', fn)} failed: {type(exc).__name__}: {str(exc)[:300]})")
        return None


# -- raw networks ---------------------------------------------------------------------------------
def _raw_network(predictor: Predictor, device: torch.device, batch: int, mode: str, seconds: float) -> float:
    net = getattr(predictor, "network", None)
    if net is None:
        return float("nan")
    net = copy.deepcopy(net).to(device).eval()
    size = predictor.card.input_spec.size
    x = torch.randn(batch, 1, *size, device=device)
    cuda = device.type == "cuda"
    if mode != "fp32":
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        net = net.to(memory_format=torch.contiguous_format)
    fn = torch.compile(net, dynamic=False) if mode == "bf16+compile" else net
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if mode.startswith("bf16") else nullcontext()

    def step() -> int:
        with torch.inference_mode(), cast:
            fn(x)
        return batch

    return rate(step, seconds=seconds, sync=cuda)


def section_raw(args: argparse.Namespace, predictors: list[Predictor], record: dict[str, Any]) -> dict[str, float]:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    modes = ["fp32", "bf16"] + (["bf16+compile"] if args.compile else []) if cuda else ["fp32"]
    batches = [1, 8, 64, 256] if cuda else [1, 8, 32]
    compiled_batches = {256}  # each batch shape is one more compilation: one is enough to compare
    best: dict[str, float] = {}
    table = Table("raw network, logits only (bare PyTorch loop, input already on the device)       images/s",
                  ["model", "input", "precision", *[f"batch {b}" for b in batches]], [24, 10, 14] + [11] * len(batches))
    for p in predictors:
        side = "x".join(map(str, p.card.input_spec.size))
        for mode in modes:
            rates = [_guarded(_raw_network, p, device, b, mode, args.seconds)
                     if mode != "bf16+compile" or b in compiled_batches else None for b in batches]
            table.add(p.card.ref, side, mode, *rates)
            best[p.card.ref] = max(best.get(p.card.ref, 0.0), *(r for r in rates if r is not None), 1e-9)
    record["raw"] = table.as_dict()

    hb = [1, 8, 64] if cuda else [1, 8]  # on a CPU one image with its heatmap is 64 forwards
    heat = Table("model with its heatmap, as the service calls it (predict(explain=True), host tensors in/out)"
                 "  images/s", ["model", "predictor", *[f"batch {b}" for b in hb]], [24, 22] + [11] * len(hb))
    best_heat: dict[str, float] = {}
    for p in predictors:
        variants: list[tuple[str, Predictor]] = [(getattr(p, "precision", "default"), p)]
        if cuda and args.compile and isinstance(p, TorchPredictor):
            # one compiled shape (64): smaller batches are padded up to it
            compiled = _guarded(TorchPredictor, p.card, device=args.device, compile=True, batch_sizes=(64,))
            if compiled is not None:
                print(f"  {p.card.ref}: compiled and warmed up in {compiled.warmup_seconds:.0f} s (at start, "
                      "never on the request path)")
                variants.append(("bf16+compile b64", compiled))
        for label, q in variants:
            rates = []
            for b in hb:
                x = torch.randn(b, 1, *q.card.input_spec.size)
                rates.append(rate(lambda x=x, q=q: len(q.predict(x, explain=True)), seconds=args.seconds,
                                  min_calls=1))
            heat.add(q.card.ref, label, *rates)
            best_heat[q.card.ref] = max(best_heat.get(q.card.ref, 0.0), *rates)
    record["raw_heatmap"] = heat.as_dict()
    # One study = one image through every model: the models' own ceiling in studies/s.
    ceiling = {"logits": 1.0 / sum(1.0 / v for v in best.values()),
               "heatmap": 1.0 / sum(1.0 / v for v in best_heat.values())}
    print(f"raw ceiling, one image through every model: {ceiling['logits']:.1f} studies/s logits only, "
          f"{ceiling['heatmap']:.1f} with heatmaps (best batch of each)")
    record["raw_ceiling"] = ceiling
    return ceiling


# -- decoding -----------------------------------------------------------------------------------
def _cpu_decode(blob: bytes) -> int:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(blob))
    return int(ds.pixel_array.shape[0] > 0)


def section_decode(args: argparse.Namespace, files: dict[str, list[Path]], record: dict[str, Any]) -> None:
    inputs = {"synthetic 2048x2048": files["j2k"][:8]}
    rg1 = rg1_j2k()
    if rg1 is not None:
        inputs["RG1 1955x1841 (real)"] = [rg1] * 8
    ok, reason = gpu_decode.availability()
    cols = ["JPEG 2000 lossless", "CPU 1 proc", f"CPU {os.cpu_count()} procs", "GPU batch 1", "GPU batch 16",
            "GPU batch 64"]
    table = Table(f"JPEG 2000 decode, images/s (GPU: {reason})", cols, [24, 12, 14, 13, 13, 13])
    decoder = gpu_decode.shared_decoder() if ok else None
    for name, paths in inputs.items():
        blobs = [p.read_bytes() for p in paths]
        one = rate(lambda blobs=blobs: sum(_cpu_decode(b) for b in blobs[:2]), seconds=args.seconds, min_calls=1)
        with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
            work = blobs * max(1, (os.cpu_count() or 1) // len(blobs) + 1)
            many = rate(lambda work=work, pool=pool: sum(pool.map(_cpu_decode, work)), seconds=args.seconds,
                        min_calls=1)
        gpu: list[float | None] = [None, None, None]
        if decoder is not None:
            streams = [next(generate_frames(pydicom.dcmread(p).PixelData, number_of_frames=1)) for p in paths]
            for i, b in enumerate((1, 16, 64)):
                batch = (streams * (b // len(streams) + 1))[:b]
                gpu[i] = rate(lambda batch=batch: sum(a is not None for a in decoder.decode(batch)),
                              seconds=args.seconds)
        table.add(name, one, many, *gpu)
    record["decode"] = table.as_dict()


# -- the pipeline in-process ---------------------------------------------------------------------
def _screen(paths: list[Path], options: ScreeningOptions, workers: int) -> tuple[float, list[float]]:
    def one(path: Path) -> float:
        t0 = time.perf_counter()
        (result,) = list(screen_inputs([InputFile(path.name, path, size=path.stat().st_size)], options))
        if result.status.value != "screened":
            raise RuntimeError(f"study not screened: {result.reason}")
        return time.perf_counter() - t0

    start = time.perf_counter()
    if workers == 1:
        latencies = [one(p) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            latencies = list(pool.map(one, paths))
    return len(paths) / (time.perf_counter() - start), latencies


def section_pipeline(args: argparse.Namespace, predictors: list[Predictor], files: dict[str, list[Path]],
                     record: dict[str, Any]) -> dict[str, float]:
    table = Table("pipeline in-process (decode to result with heatmaps; no output files)",
                  ["input", "threads", "studies/s", "p50 ms", "p95 ms", "mean batch"], [38, 9, 11, 9, 9, 12])
    best: dict[str, float] = {}
    for kind, paths in files.items():
        label = "2048x2048 uncompressed" if kind == "raw" else "2048x2048 JPEG 2000 lossless"
        _screen(paths[:1], ScreeningOptions(predictors=predictors), 1)  # warm-up
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(_screen, paths[:8], ScreeningOptions(predictors=predictors), 1)
            print(f"  profile of 8 studies ({label}, one thread), top functions by own time:")
            stats = io.StringIO()
            pstats.Stats(profile, stream=stats).sort_stats("tottime").print_stats(12)
            print("\n".join("    " + line for line in stats.getvalue().splitlines()[6:20] if line.strip()))
        studies, lat = _screen(paths, ScreeningOptions(predictors=predictors), 1)
        table.add(label, 1, studies, pct(lat, 50), pct(lat, 95), 1.0)
        best[kind] = studies
        batched = [BatchingPredictor(p, max_batch=64, max_wait_ms=5.0) for p in predictors]
        try:
            workers = max(WORKERS, (os.cpu_count() or 1)) if resolve_device(args.device).type == "cuda" else WORKERS
            studies, lat = _screen(paths, ScreeningOptions(predictors=batched), workers)
            table.add(label, workers, studies, pct(lat, 50), pct(lat, 95), batched[0].stats.mean_batch)
            best[kind] = max(best[kind], studies)
            # what the service does on top: PNG overlays and the SC/SEG/SR files, in the same threads
            outputs = ScreeningOptions(predictors=batched, out_dir=Path(tempfile.mkdtemp(prefix="bench-out-")))
            studies, lat = _screen(paths, outputs, workers)
            table.add(label + " +outputs", workers, studies, pct(lat, 50), pct(lat, 95), batched[0].stats.mean_batch)
            best[kind + "+outputs"] = studies
            shutil.rmtree(outputs.out_dir or "", ignore_errors=True)
            if resolve_device(args.device).type == "cuda" and kind == "raw":
                adaptive = [BatchingPredictor(p, max_batch=64, max_wait_ms=5.0, adaptive=True) for p in predictors]
                try:
                    studies, lat = _screen(paths, ScreeningOptions(predictors=adaptive), workers)
                    table.add(label + " adaptive", workers, studies, pct(lat, 50), pct(lat, 95),
                              adaptive[0].stats.mean_batch)
                finally:
                    for b in adaptive:
                        b.close()
        finally:
            for b in batched:
                b.close()
    record["pipeline"] = table.as_dict()
    return best


# -- the HTTP service ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _TreeMemory(threading.Thread):
    """Samples the RSS of a process tree (and its GPU memory) until stopped; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_gpu, self.stop = pid, 0.0, 0.0, threading.Event()
        self.per_process: dict[str, float] = {}  # peak RSS (MiB) by process role

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                sizes = {p.pid: p.memory_info().rss / 2**20 for p in procs if p.is_running()}
                self.peak_rss = max(self.peak_rss, sum(sizes.values()))
                for p in procs:
                    if p.pid in sizes:
                        role = _role(p.cmdline())
                        self.per_process[role] = max(self.per_process.get(role, 0.0), sizes[p.pid])
                self.peak_gpu = max(self.peak_gpu, _gpu_used_mb({p.pid for p in procs}))
            except (psutil.Error, OSError):
                pass
            self.stop.wait(0.2)


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for marker, role in (("_bentoml_impl.worker", "BentoML worker (models)"), ("bentoml serve", "BentoML arbiter"),
                         ("secondreader.cli", "secondreader serve (CLI)")):
        if marker in text:
            return role
    return "other: " + " ".join(Path(a).name for a in cmdline[:3])[:60]


def _gpu_used_mb(pids: set[int]) -> float:
    try:
        import pynvml
    except ImportError:
        return 0.0
    try:
        pynvml.nvmlInit()
        total = 0.0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    total += proc.usedGpuMemory / 2**20
        return total
    except pynvml.NVMLError:
        return 0.0


def _py_spy() -> str | None:
    for candidate in (shutil.which("py-spy"), "/tmp/site/bin/py-spy", "/tmp/pyspy-site/bin/py-spy"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _worker_pid(root: int) -> int | None:
    import psutil

    try:
        for p in psutil.Process(root).children(recursive=True):
            if "_bentoml_impl.worker" in " ".join(p.cmdline()):
                return int(p.pid)
    except psutil.Error:
        return None
    return None


def _summarise_profile(folded: Path, top: int = 12) -> None:
    """Own time by function, and time inside secondreader's functions, from py-spy's raw output."""
    own: dict[str, int] = {}
    inside: dict[str, int] = {}
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in dict.fromkeys(f.split(" (")[0] + " (" + f.split("/")[-1] for f in frames
                                   if "secondreader/" in f):
            inside[frame] = inside.get(frame, 0) + count
    if not total:
        print("  py-spy recorded no samples")
        return
    print(f"  py-spy, service worker, {total} samples: own time by function")
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / total:5.1f}%  {name[:110]}")
    print("  time inside secondreader functions (inclusive)")
    for name, n in sorted(inside.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / total:5.1f}%  {name[:110]}")


def _post(files: list[Path], concurrency: int, base: str, key: str) -> tuple[float, list[float], float]:
    """POST each file to /v1/screen from ``concurrency`` clients. Returns studies/s answered,
    the answers' latencies (s), and studies/s until every study's overlays and DICOM outputs were
    written too (the service answers before it encodes them: ``artifacts.status`` "pending")."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/dicom"}
    bodies = [f.read_bytes() for f in files]
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4))

    def one(body: bytes) -> tuple[float, str]:
        t0 = time.perf_counter()
        r = client.post(f"{base}/v1/screen?wait=300", content=body, headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        return time.perf_counter() - t0, r.json()["studies"][0]["study_instance_uid"]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, bodies))
    answered = time.perf_counter() - start
    waiting = {uid for _, uid in answers}
    deadline = time.monotonic() + 600
    while waiting and time.monotonic() < deadline:
        for uid in list(waiting):
            study = client.get(f"{base}/v1/studies/{uid}", headers={"Authorization": f"Bearer {key}"}).json()
            if study.get("artifacts", {}).get("status") in ("written", "failed"):
                waiting.discard(uid)
        if waiting:
            time.sleep(0.05)
    written = time.perf_counter() - start
    client.close()
    if waiting:
        raise RuntimeError(f"{len(waiting)} studies' outputs were not written in 600 s")
    return len(bodies) / answered, [lat for lat, _ in answers], len(bodies) / written


def section_http(args: argparse.Namespace, files: dict[str, list[Path]], tmp: Path, record: dict[str, Any],
                 ceiling: dict[str, float] | None, pipeline: dict[str, float]) -> None:
    home = tmp / "home"
    port, key = _free_port(), "bench-key"
    env = {**os.environ, "SECONDREADER_HOME": str(home), "SECONDREADER_API_KEYS": key,
           "SECONDREADER_DEVICE": args.device, "SECONDREADER_DICOM_PORT": str(_free_port()),
           "SECONDREADER_HL7_PORT": str(_free_port())}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    t_start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "secondreader.cli", "--log-level", "WARNING", "serve",
                             "--port", str(port), "--no-samples"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    memory = _TreeMemory(proc.pid)
    memory.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, timeout=240, stopped=lambda: None if proc.poll() is None else
                         f"secondreader serve exited with {proc.returncode}: "
                         + (tmp / "serve.log").read_text(errors="replace")[-2000:])
        ready_s = time.perf_counter() - t_start
        _post(files["raw"][:2], 1, base, key)  # warm-up
        idle_rss = memory.peak_rss
        table = Table(f"HTTP service (secondreader serve, ready in {ready_s:.0f} s, idle RSS {idle_rss:.0f} MiB)",
                      ["input", "concurrency", "studies", "studies/s", "p50 ms", "p95 ms", "p99 ms",
                       "with outputs/s", "/pipe+out", "/raw heat"], [30, 12, 9, 11, 9, 9, 9, 15, 11, 11])
        for kind, paths in files.items():
            label = "2048x2048 uncompressed" if kind == "raw" else "2048x2048 JPEG 2000 lossless"
            for concurrency in args.concurrency:
                n = max(len(paths), concurrency)
                batch = (paths * (n // len(paths) + 1))[:n]
                spy = None
                if args.pyspy and kind == "raw" and concurrency == max(c for c in args.concurrency if c <= 16):
                    binary, pid = _py_spy(), _worker_pid(proc.pid)
                    if binary and pid:
                        spy = subprocess.Popen([binary, "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
                                                "--output", args.pyspy, "--nonblocking", "--threads"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(1.0)
                    else:
                        print(f"  (py-spy: {'binary missing' if not binary else 'worker not found'})")
                studies, lat, with_outputs = _post(batch, concurrency, base, key)
                if spy is not None:
                    spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                    try:
                        spy.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                table.add(label, concurrency, n, studies, pct(lat, 50), pct(lat, 95), pct(lat, 99), with_outputs,
                          studies / pipeline[kind + "+outputs"] if kind + "+outputs" in pipeline else None,
                          studies / ceiling["heatmap"] if ceiling else None)
        record["http"] = table.as_dict()
        record["http_memory"] = {"idle_rss_mb": idle_rss, "peak_rss_mb": memory.peak_rss,
                                 "peak_gpu_mb": memory.peak_gpu, "per_process_peak_mb": memory.per_process}
        if args.pyspy and Path(args.pyspy).is_file():
            _summarise_profile(Path(args.pyspy))
        print("service peak RSS by process: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.per_process.items()))
        print(f"service memory: RSS {idle_rss:.0f} MiB idle after warm-up, peak {memory.peak_rss:.0f} MiB "
              f"(process tree); GPU {memory.peak_gpu:.0f} MiB peak")
    finally:
        memory.stop.set()
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sections", nargs="+", default=["raw", "decode", "pipeline", "http"],
                        choices=["raw", "decode", "pipeline", "http"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--studies", type=int, default=32, help="studies per pipeline/HTTP measurement (minimum)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per raw/decode measurement")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA; adds compile time)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 on a busy CPU,"
                        " where OpenMP threads wait on each other); the HTTP server gets OMP_NUM_THREADS")
    parser.add_argument("--json", help="write every table to this JSON file")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of 8 in-process studies per input")
    parser.add_argument("--pyspy", help="py-spy the service worker during the uncompressed run at concurrency 16 "
                        "(folded stacks to this file; needs the py-spy binary)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        args.device = str(device)
    predictors = load_predictors(args.device)
    record: dict[str, Any] = {"machine": machine(), "device": device_name(args.device),
                              "models": [p.card.ref for p in predictors]}
    print(f"device {record['device']}; models {', '.join(record['models'])}; {record['machine']['date']}")
    ceiling = _guarded(section_raw, args, predictors, record) if "raw" in args.sections else None
    write_json(args.json, record)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        distinct = min(args.studies, 8)
        raw = [synthetic_cr(tmp / f"u{i}.dcm", i) for i in range(distinct)]
        j2k = [synthetic_cr(tmp / f"j{i}.dcm", i, j2k=True) for i in range(distinct)]
        reps = max(1, args.studies // distinct)
        # JPEG 2000 decoded on a few CPU threads takes about a second per study: fewer of them then
        j2k_reps = reps if gpu_decode.availability()[0] or device.type == "cpu" else max(1, 16 // distinct)
        files = {"raw": raw * reps, "j2k": j2k * j2k_reps}
        if "decode" in args.sections:
            _guarded(section_decode, args, {"j2k": j2k}, record)
            write_json(args.json, record)
        pipeline = (_guarded(section_pipeline, args, predictors, files, record) or {}) \
            if "pipeline" in args.sections else {}
        write_json(args.json, record)
        if "http" in args.sections:
            _guarded(section_http, args, files, tmp, record, ceiling, pipeline)
    record["bench_process"] = {"peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu_peak_mb()}
    gpu = record["bench_process"]["peak_gpu_mb"]
    print(f"\nbenchmark process: peak RSS {peak_rss_mb():.0f} MiB"
          + (f", peak GPU memory allocated {gpu:.0f} MiB" if gpu is not None else ""))
    if ceiling and pipeline.get("raw") and pipeline.get("j2k"):
        print(f"pipeline / raw ceiling with heatmaps: uncompressed {pipeline['raw'] / ceiling['heatmap']:.3f}, "
              f"JPEG 2000 {pipeline['j2k'] / ceiling['heatmap']:.3f}")
    write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
