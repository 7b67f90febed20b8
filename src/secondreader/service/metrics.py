"""secondreader's own Prometheus metrics, exposed on BentoML's ``/metrics`` beside its own
(prometheus_client directly: BentoML sets up its multiprocess collector before the service loads).

Labels carry statuses, stages and model versions only: never a UID or anything from a header.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["batch_size", "model_loaded", "queue_depth", "study_done"]

_STAGES = ("load", "preprocess", "inference", "postprocess", "total")

_studies = Counter(
    name="secondreader_studies_total", documentation="Studies screened, by result status", labelnames=["status"]
)
_stage_seconds = Histogram(
    name="secondreader_stage_seconds", documentation="Time per pipeline stage per study", labelnames=["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
_queue = Gauge(name="secondreader_queue_depth", documentation="Jobs waiting for a worker")
_models = Gauge(
    name="secondreader_model_info", documentation="Loaded models (value 1)", labelnames=["model", "version"]
)
_batches = Histogram(
    name="secondreader_batch_size", documentation="Images per model call", labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


def study_done(result: dict[str, Any]) -> None:
    _studies.labels(status=str(result.get("status", "failed"))).inc()
    timing = result.get("timing_ms") or {}
    for stage in _STAGES:
        if stage in timing:
            _stage_seconds.labels(stage=stage).observe(float(timing[stage]) / 1000.0)


def queue_depth(depth: int) -> None:
    _queue.set(depth)


def model_loaded(name: str, version: str) -> None:
    _models.labels(model=name, version=version).set(1)


def batch_size(model: str, size: int) -> None:
    _batches.labels(model=model).observe(size)
