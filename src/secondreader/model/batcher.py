"""``BatchingPredictor``: concurrent studies share model batches.

Each caller's images wait at most ``max_wait_ms`` for others to join; the model then runs once on
up to ``max_batch`` images. With ``adaptive=True`` the wait ends as soon as every caller inside
``predict`` has joined the batch: a lone study does not wait for companions that are not coming,
and the requests that queue up during one model call form the next batch. It batches less when
studies arrive a few milliseconds apart (``benchmarks/throughput.py`` compares both on a GPU), so
it is off by default.
It implements the ``Predictor`` protocol, so the pipeline does not know it is there. Decoding and
preprocessing happen in the callers' threads, outside the model lock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .card import ModelCard
from .predictor import Prediction, Predictor

__all__ = ["BatchStats", "BatchingPredictor"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchStats:
    batches: int = 0
    images: int = 0
    sizes: list[int] = field(default_factory=list)
    early: int = 0  # batches started before max_wait because every caller had joined

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Request:
    batch: torch.Tensor
    explain: bool
    future: Future[list[Prediction]]


class BatchingPredictor:
    """Wraps a predictor with a background thread that merges concurrent ``predict`` calls."""

    def __init__(self, inner: Predictor, *, max_batch: int = 32, max_wait_ms: float = 10.0,
                 adaptive: bool = False, on_batch: Callable[[str, int], None] | None = None) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.inner = inner
        self.card: ModelCard = inner.card
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.adaptive = adaptive
        self.on_batch = on_batch  # told (model name, batch size) after each batch: the service's metrics
        self.stats = BatchStats()
        self._inside = 0  # callers between entering predict and getting their answer
        self._inside_lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{self.card.name}", daemon=True)
        self._thread.start()

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        future: Future[list[Prediction]] = Future()
        with self._inside_lock:
            self._inside += 1
        try:
            self._queue.put(_Request(batch, explain, future))
            return future.result()
        finally:
            with self._inside_lock:
                self._inside -= 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            size = first.batch.shape[0]
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                # every caller inside predict is in this group (callers of the last batch that
                # have not left yet make this conservative: then the wait is max_wait as before)
                if self.adaptive and self._queue.empty() and self._inside <= len(group):
                    self.stats.early += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                group.append(nxt)
                size += nxt.batch.shape[0]
            self._run(group)

    def _run(self, group: list[_Request]) -> None:
        # One model call per saliency setting (explain or not), inputs concatenated.
        for explain in (True, False):
            members = [r for r in group if r.explain is explain]
            if not members:
                continue
            try:
                outputs = self.inner.predict(torch.cat([r.batch for r in members]), explain=explain)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for r in members:
                    r.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.images += len(outputs)
            self.stats.sizes.append(len(outputs))
            if self.on_batch is not None:
                self.on_batch(self.card.name, len(outputs))
            start = 0
            for r in members:
                n = r.batch.shape[0]
                r.future.set_result(outputs[start:start + n])
                start += n
