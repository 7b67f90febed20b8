#!/usr/bin/env bash
# The GPU checks and benchmarks in one call (about 4 minutes on one H100/H200):
#   pytest -m gpu (tests/gpu), benchmarks/nodule_fit_speed.py (where ../shared/data is), then
#   benchmarks/stage_times.py and benchmarks/throughput.py.
#
#   benchmarks/gpu.sh                      # here, or on the lent GPU machine (see below)
#   OUT=/some/dir benchmarks/gpu.sh        # logs and JSON records land in $OUT (default: a temp dir)
#
# Without a CUDA device it runs in CPU fallback mode: the same scripts on the CPU, with fewer
# studies and concurrency 1 4 16 (a 2-core machine needs minutes for 64 concurrent 2k studies).
#
# The lent GPU machine has PyTorch but no package registry: wheels for what it lacks travel in
# .whl/ (ignored by git; see benchmarks/RESULTS.md for the list) and are installed to /tmp/site.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c "import monai, bentoml" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -3
    # Two wheels put an nvidia/__init__.py there; keep the namespace open to the image's nvidia.* packages.
    [ -d /tmp/site/nvidia ] && printf '__path__ = __import__("pkgutil").extend_path(__path__, __name__)\n' \
        >/tmp/site/nvidia/__init__.py
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export LD_LIBRARY_PATH=/tmp/site/nvidia/nvjpeg2k/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export PYTHONPATH=$ROOT/src:$ROOT/benchmarks:$ROOT${PYTHONPATH:+:$PYTHONPATH}
[ -d .benchdata ] && export SECONDREADER_BENCH_DATA=$ROOT/.benchdata

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    MODE=gpu DEVICE=cuda LIMITS=(100 70 220) FIT_LIMIT=150
    # 16 host cores: more screening threads keep the GPU fed; outputs are encoded after the answer
    export SECONDREADER_SCREEN_WORKERS=${SECONDREADER_SCREEN_WORKERS:-12}
    STAGE_ARGS=(--repeats 5) THROUGHPUT_ARGS=(--compile --profile --seconds 1 --studies 32 --concurrency 1 4 16 64)
else
    MODE=cpu DEVICE=cpu LIMITS=(0 900 1800) FIT_LIMIT=600
    STAGE_ARGS=(--repeats 3) THROUGHPUT_ARGS=(--seconds 1 --studies 8 --concurrency 1 4 16)
fi

{
    echo "== mode $MODE, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
from secondreader.dicom import gpu_decode
print("GPU JPEG 2000 decoding:", gpu_decode.availability())
from common import bundles
print("bundles:", [b.name for b in bundles()])
EOF
} 2>&1 | tee "$OUT/env.log"

status=0
SECONDS=0
if [ "$MODE" = gpu ]; then
    echo "== pytest -m gpu"
    # -W default: the lent machine's package versions differ from the project's pins; its warnings
    # are reported, not turned into failures there (CI keeps filterwarnings = error).
    timeout "${LIMITS[0]}" "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider -W default 2>&1 | tee "$OUT/pytest_gpu.log" \
        || status=1
    echo "   pytest took ${SECONDS}s"
fi
if [ -d ../shared/data/cxr ]; then
    echo "== nodule_fit_speed ($MODE): the recipe's steps/s with its batch preparation, by loader_workers and layout"
    timeout "${FIT_LIMIT}" "$PY" benchmarks/nodule_fit_speed.py --loaders 0 4 12 2>&1 | tee "$OUT/nodule_fit_speed.log" \
        || status=1
fi
echo "== stage_times ($MODE)"
timeout "${LIMITS[1]}" "$PY" benchmarks/stage_times.py --device "$DEVICE" "${STAGE_ARGS[@]}" --json "$OUT/stage_times.json" \
    2>&1 | tee "$OUT/stage_times.log" || status=1
echo "== throughput ($MODE)"
timeout "${LIMITS[2]}" "$PY" benchmarks/throughput.py --device "$DEVICE" "${THROUGHPUT_ARGS[@]}" --json "$OUT/throughput.json" \
    --pyspy "$OUT/pyspy_worker.txt" \
    2>&1 | tee "$OUT/throughput.log" || status=1
echo "== done in ${SECONDS}s, status $status; logs and JSON in $OUT"
exit $status
