"""Audit engines: they run :class:`~secondreader.audit.stage.StudyAuditor` over study tasks and
hand each finished task's rows to a callback in the calling process (which checkpoints them).

- :mod:`.local`: worker processes decode and preprocess; the model runs batched in the main process.
- :mod:`.raydata`: Ray Data ``map_batches`` over an actor pool that holds the model (GPU actors when
  the cluster has GPUs), on ``ray.init(address=...)`` or a local Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..archive import StudyTask
from ..stage import StageOptions

__all__ = ["Engine", "EngineSpec", "EngineStats", "OnResult"]

#: Called in the calling process for every finished task: (task, its rows).
OnResult = Callable[[StudyTask, list[dict[str, Any]]], None]


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What every engine needs: the model bundles, the device, the stage options, and the secret
    and log level that worker processes must share with the caller."""

    model_dirs: tuple[Path, ...]
    stage: StageOptions
    device: str = "auto"
    workers: int = 2
    max_batch: int = 32
    max_wait_ms: float = 5.0
    secret: bytes = b""
    log_level: str = "WARNING"

    def __post_init__(self) -> None:
        if not self.model_dirs:
            raise ValueError("at least one model bundle is needed")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, not {self.workers}")


@dataclass(slots=True)
class EngineStats:
    """What an engine measured: start-up time (models, processes, cluster) and model batches."""

    startup_s: float = 0.0
    batches: int = 0
    images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class Engine(Protocol):
    stats: EngineStats

    def run(self, tasks: Iterable[StudyTask], on_result: OnResult) -> None:
        """Audit every task; ``on_result`` is called once per task, in the caller's process.
        A ``KeyboardInterrupt`` stops the workers and propagates; finished tasks were handed over."""
        ...
