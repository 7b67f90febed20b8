"""The micro-batcher merges concurrent predict calls and hands every caller its own outputs."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from secondreader.model.batcher import BatchingPredictor
from secondreader.model.predictor import Prediction


class SlowEcho:
    """A predictor whose logit is the input's mean; each call takes 50 ms (a model on a GPU)."""

    card = type("Card", (), {"name": "echo"})()

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        with self._lock:
            self.calls.append(batch.shape[0])
        time.sleep(0.05)
        return [Prediction(logits=np.array([float(x.mean())], dtype=np.float32), saliency=None) for x in batch]


def test_concurrent_calls_share_batches_and_get_their_own_answers() -> None:
    inner = SlowEcho()
    batcher = BatchingPredictor(inner, max_batch=32, max_wait_ms=30)  # type: ignore[arg-type]
    try:
        def call(value: int) -> list[float]:
            batch = torch.full((2, 1, 4, 4), float(value))
            return [float(p.logits[0]) for p in batcher.predict(batch, explain=False)]

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(call, range(12)))
    finally:
        batcher.close()
    assert answers == [[float(v), float(v)] for v in range(12)]
    assert sum(inner.calls) == 24
    assert len(inner.calls) < 12, f"no batches were shared: {inner.calls}"
    assert max(inner.calls) <= 32 and batcher.stats.images == 24


def test_an_inner_failure_reaches_every_waiting_caller() -> None:
    class Broken(SlowEcho):
        def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
            raise RuntimeError("device lost")

    batcher = BatchingPredictor(Broken(), max_batch=8, max_wait_ms=5)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            batcher.predict(torch.zeros(1, 1, 4, 4))
    finally:
        batcher.close()


def test_a_lone_caller_does_not_wait_for_companions_unless_told_to() -> None:
    inner = SlowEcho()
    adaptive = BatchingPredictor(inner, max_batch=8, max_wait_ms=60_000, adaptive=True)  # type: ignore[arg-type]
    patient = BatchingPredictor(inner, max_batch=8, max_wait_ms=50)  # type: ignore[arg-type]
    try:
        (answer,) = adaptive.predict(torch.full((1, 1, 4, 4), 3.0), explain=False)
        patient.predict(torch.zeros(1, 1, 4, 4), explain=False)
    finally:
        adaptive.close()
        patient.close()
    assert float(answer.logits[0]) == 3.0
    # the adaptive batcher started at once (it would otherwise have waited its full minute);
    # the non-adaptive one waited its max_wait out
    assert adaptive.stats.early == 1 and patient.stats.early == 0
