"""The ``ray`` engine: the same stage as Ray Data, ``map_batches`` over an actor pool whose actors
hold the model (one GPU each when the cluster has GPUs), on ``ray.init(address=...)`` or a local Ray.

Each actor screens the studies of its batch in a few threads, so the model (behind a
:class:`~secondreader.model.batcher.BatchingPredictor`) sees batches across studies while other
studies decode. Folder and zip archives must be readable at the same path on every node (a shared
file system); a DICOMweb archive needs nothing shared.

Ray listens on all interfaces and probes the cloud metadata address: start a local Ray only inside a
private network namespace (the tests do). Ray's usage statistics, dashboard and token
authentication are turned off, and its temporary folder is the one given (never ``/tmp/ray``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..archive import StudyTask
from ..stage import StageOptions
from . import EngineSpec, EngineStats, OnResult

__all__ = ["RayEngine", "ray_environment"]

logger = logging.getLogger(__name__)


def ray_environment() -> dict[str, str]:
    """Environment for Ray (set before ``import ray``; inherited by the processes it starts)."""
    return {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
            "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "RAY_DEDUP_LOGS": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


class StudyAuditorActor:
    """A Ray Data actor: loads the models once, then audits batches of serialised tasks."""

    def __init__(self, model_dirs: list[str], device: str, stage: dict[str, Any], threads: int, max_batch: int,
                 max_wait_ms: float, secret: bytes, log_level: str) -> None:
        import torch

        from ...logsafe import configure_logging, set_secret
        from ...model.batcher import BatchingPredictor
        from ...model.dense import load_predictor
        from ..stage import StudyAuditor

        configure_logging(log_level)
        set_secret(secret)
        torch.set_num_threads(1)
        # Pictures are written on this node, then shipped back with the rows (no shared file system needed).
        self.scratch = Path(tempfile.mkdtemp(prefix="secondreader-audit-actor-"))
        options = StageOptions(images_dir=self.scratch / "images" if stage["images_dir"] else None,
                               spool_dir=self.scratch / "spool", max_pixels=int(stage["max_pixels"]),
                               modes=dict(stage.get("modes") or {}))
        self.models = [BatchingPredictor(load_predictor(Path(d), device=device), max_batch=max_batch,
                                         max_wait_ms=max_wait_ms) for d in model_dirs]
        self.auditor = StudyAuditor(self.models, options)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="audit")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tasks = [StudyTask.from_json(json.loads(str(t))) for t in batch["task"]]
        rows = list(self.pool.map(self.auditor.audit, tasks))
        files = [self._pictures(task_rows) for task_rows in rows]
        return {"task": batch["task"], "rows": np.array([json.dumps(r) for r in rows], dtype=object),
                "files": np.array([json.dumps(f) for f in files], dtype=object)}

    def _pictures(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """The pictures the rows refer to (``images/...``), base64, removed from this node."""
        out: dict[str, str] = {}
        for row in rows:
            for pictures in row["images"].values():
                for relative in pictures.values():
                    path = self.scratch / relative
                    if relative and path.is_file():
                        out[relative] = base64.b64encode(path.read_bytes()).decode("ascii")
            if row["study_instance_uid"]:
                shutil.rmtree(self.scratch / "images" / row["study_instance_uid"], ignore_errors=True)
        return out


class RayEngine:
    """``address``: an existing cluster (``ray://`` or ``host:port``), or ``None`` for a local Ray
    started with ``spec.workers`` CPUs and its temporary folder under ``temp_dir``."""

    def __init__(self, spec: EngineSpec, *, address: str | None = None, temp_dir: Path | None = None,
                 batch_size: int = 4) -> None:
        self.spec = spec
        self.address = address
        self.temp_dir = temp_dir
        self.batch_size = batch_size
        self.stats = EngineStats()

    def run(self, tasks: Iterable[StudyTask], on_result: OnResult) -> None:
        t0 = time.perf_counter()
        os.environ.update(ray_environment())
        import ray
        import ray.data

        started_here = not ray.is_initialized()
        if started_here:
            kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": False}
            if self.address is None:
                kwargs["num_cpus"] = self.spec.workers
                if self.temp_dir is not None:
                    self.temp_dir.mkdir(parents=True, exist_ok=True)
                    kwargs["_temp_dir"] = str(self.temp_dir.resolve())
            ray.init(address=self.address, **kwargs)
        try:
            self._run(ray, tasks, on_result, t0)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray: Any, tasks: Iterable[StudyTask], on_result: OnResult, t0: float) -> None:
        spec = self.spec
        by_key = {t.key: t for t in tasks}
        if not by_key:
            return
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the audit draws its own
        context.print_on_execution_start = False
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        actors = gpus if gpus else cpus
        stage = asdict(spec.stage)
        stage = {k: str(v) if isinstance(v, Path) else v for k, v in stage.items()}
        items = [{"task": json.dumps(t.to_json())} for t in by_key.values()]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * actors)))
        dataset = dataset.map_batches(
            StudyAuditorActor,
            fn_constructor_kwargs={
                "model_dirs": [str(d.resolve()) for d in spec.model_dirs],
                "device": "cuda" if gpus else "cpu", "stage": stage, "threads": self.batch_size,
                "max_batch": spec.max_batch, "max_wait_ms": spec.max_wait_ms, "secret": spec.secret,
                "log_level": spec.log_level,
            },
            batch_size=self.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0, num_cpus=1,
        )
        self.stats.extra.update({"actors": actors, "gpus": gpus, "cpus": cpus})
        self.stats.startup_s = time.perf_counter() - t0  # cluster; the actors start lazily below
        images_dir = spec.stage.images_dir
        for record in dataset.iter_rows():
            task = by_key[json.loads(record["task"])["key"]]
            for relative, data in json.loads(record["files"]).items():
                if images_dir is not None and relative.startswith("images/") and ".." not in relative:
                    target = images_dir / relative[len("images/"):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(data))
            on_result(task, json.loads(record["rows"]))
