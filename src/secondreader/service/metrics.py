"""secondreader's Prometheus metrics and the service's ``/metrics`` (prometheus_client directly).

Labels carry statuses, stages, model names, versions and modes, finding codes and outcomes only:
never a UID or anything from a header.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["FINDING_OUTCOMES", "MetricsMiddleware", "batch_size", "exposition", "finding_outcome", "model_loaded",
           "outbox_dead_lettered", "outbox_sent", "outputs_pending", "queue_depth", "route_of", "shared_queues",
           "stage_time", "study_done"]

_STAGES = ("load", "preprocess", "inference", "postprocess", "total")

_studies = Counter(
    name="secondreader_studies_total", documentation="Studies screened, by result status", labelnames=["status"]
)
_stage_seconds = Histogram(
    name="secondreader_stage_seconds", documentation="Time per pipeline stage per study", labelnames=["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
_queue = Gauge(name="secondreader_queue_depth", documentation="Jobs waiting for a worker")
_outputs = Gauge(name="secondreader_outputs_pending",
                 documentation="Screened studies whose overlays and DICOM outputs are not yet written")
_models = Gauge(
    name="secondreader_model_info", documentation="Loaded models (value 1)", labelnames=["model", "version"]
)
_modes = Gauge(
    name="secondreader_model_mode", documentation="The mode each loaded model runs in at this site (value 1)",
    labelnames=["model", "mode"],
)
#: A screened study's finding: ``positive`` / ``negative`` at its operating point, or
#: ``not_applicable`` (the study is outside the model's scope). Shadow findings count under their mode,
#: so a site sees what a model would send to review before it goes live.
FINDING_OUTCOMES = ("positive", "negative", "not_applicable")
_findings = Counter(
    name="secondreader_findings_total",
    documentation="Findings of screened studies by model, finding code, mode (live/shadow) and outcome "
                  "(positive/negative/not_applicable)",
    labelnames=["model", "finding", "mode", "outcome"],
)
_batches = Histogram(
    name="secondreader_batch_size", documentation="Images per model call", labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


# -- the shared store's queues: the same figures on every replica (read from the store) ------------
_outbox_rows = Gauge(name="secondreader_outbox_rows",
                     documentation="Result objects in the shared outbox by status (pending, sent, dead)",
                     labelnames=["status"], multiprocess_mode="max")
_outbox_oldest = Gauge(name="secondreader_outbox_oldest_pending_seconds",
                       documentation="Age of the oldest result object not yet delivered (0 when none): a stall "
                                     "shows as a growing value", multiprocess_mode="max")
_jobs = Gauge(name="secondreader_jobs", documentation="Jobs in the shared store by state (queued, running)",
              labelnames=["status"], multiprocess_mode="max")
_outbox_sent = Counter(name="secondreader_outbox_sent_total", documentation="Result objects this replica delivered")
_outbox_dead = Counter(name="secondreader_outbox_dead_lettered_total",
                       documentation="Result objects this replica dead-lettered (their file is gone)")


def shared_queues(outbox: dict[str, int], oldest_pending_seconds: float, jobs: dict[str, int]) -> None:
    """The store-wide figures (every replica reports the same)."""
    for status in ("pending", "sent", "dead"):
        _outbox_rows.labels(status=status).set(outbox.get(status, 0))
    _outbox_oldest.set(oldest_pending_seconds)
    for status in ("queued", "running"):
        _jobs.labels(status=status).set(jobs.get(status, 0))


def outbox_sent() -> None:
    _outbox_sent.inc()


def outbox_dead_lettered() -> None:
    _outbox_dead.inc()


def finding_outcome(finding: dict[str, Any]) -> str:
    """``positive``, ``negative`` or ``not_applicable`` for one ``findings[]`` entry of contract 2."""
    if finding.get("applicable", True) is False:
        return "not_applicable"
    return "positive" if finding.get("positive") else "negative"


def study_done(result: dict[str, Any]) -> None:
    _studies.labels(status=str(result.get("status", "failed"))).inc()
    for finding in result.get("findings") or []:
        _findings.labels(model=str(finding.get("model", "")).split("@")[0], finding=str(finding.get("code", "")),
                         mode=str(finding.get("mode", "live")), outcome=finding_outcome(finding)).inc()
    timing = result.get("timing_ms") or {}
    for stage in _STAGES:
        if stage in timing:
            _stage_seconds.labels(stage=stage).observe(float(timing[stage]) / 1000.0)


def stage_time(stage: str, seconds: float) -> None:
    """A stage timed apart from the study's result (``encode``: outputs written after the answer)."""
    _stage_seconds.labels(stage=stage).observe(seconds)


def queue_depth(depth: int) -> None:
    _queue.set(depth)


def outputs_pending(count: int) -> None:
    _outputs.set(count)


def model_loaded(name: str, version: str, mode: str = "live") -> None:
    _models.labels(model=name, version=version).set(1)
    _modes.labels(model=name, mode=mode).set(1)


def batch_size(model: str, size: int) -> None:
    _batches.labels(model=model).observe(size)


# -- HTTP requests, labelled by route template (never by the path, which holds study UIDs) ----------
_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (template, re.compile("^" + re.sub(r"\{[a-z_]+\}", r"[^/]+", template).replace(".", r"\.") + "$"))
    for template in (
        "/v1/screen", "/v1/jobs/{job_id}", "/v1/studies/{study_uid}", "/v1/studies/{study_uid}/reviews",
        "/v1/studies/{study_uid}/instances/{sop_uid}/dicom",
        "/v1/studies/{study_uid}/instances/{sop_uid}/heatmaps/{finding}.png",
        "/v1/reports", "/v1/worklist", "/v1/worklist/rates", "/v1/reviews/manifest.csv", "/v1/dicomweb/studies",
        "/v1/admin/outbox", "/v1/admin/outbox/{item_id}/retry",
        "/healthz", "/livez", "/readyz",
    )
)
_requests = Counter(
    name="secondreader_http_requests_total", documentation="HTTP requests by route template, method and status",
    labelnames=["route", "method", "code"],
)
_request_seconds = Histogram(
    name="secondreader_http_request_seconds", documentation="HTTP request duration by route template",
    labelnames=["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})


def route_of(path: str) -> str:
    """The route template a path belongs to (``/viewer`` for the page's files, else ``other``)."""
    for template, pattern in _ROUTES:
        if pattern.match(path):
            return template
    if path == "/viewer" or path.startswith("/viewer/"):
        return "/viewer"
    return "other"


def exposition() -> tuple[bytes, str]:
    """The Prometheus text exposition of this process's (or, under BentoML's multiprocess mode,
    every worker's) metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Serves ``GET /metrics`` and counts every HTTP request under its route template.

    BentoML's own traffic metrics label requests with the raw path (``/v1/studies/<UID>``), which
    puts study UIDs into the metrics and grows a new series per study; the service turns them off
    and this takes their place at the same ``/metrics``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/metrics":
            body, content_type = await asyncio.to_thread(exposition)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", content_type.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        route = route_of(path)
        status = 500
        started = time.perf_counter()

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            _requests.labels(route=route, method=method if method in _METHODS else "other", code=str(status)).inc()
            _request_seconds.labels(route=route).observe(time.perf_counter() - started)
