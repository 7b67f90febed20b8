"""The ``local`` engine: worker processes read, decode, preprocess and post-process studies; the
model runs in the main process, batched across the workers' studies.

Each worker screens with a :class:`RemotePredictor`, which ships the (small) model-input tensor to the
main process and waits for the predictions. There a :class:`~secondreader.model.batcher.BatchingPredictor`
merges the concurrent requests into one model call. A worker that dies (a decoder crash) costs only
its current study, which gets a failed row, and is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.context import SpawnProcess
from typing import Any

import numpy as np
import torch

from ...errors import ModelError
from ...logsafe import configure_logging, set_secret
from ...model.batcher import BatchingPredictor
from ...model.card import ModelCard
from ...model.dense import load_predictor
from ...model.predictor import Prediction
from ..archive import StudyTask
from ..stage import StageOptions, StudyAuditor, failed_row
from . import EngineSpec, EngineStats, OnResult

__all__ = ["LocalEngine", "RemotePredictor"]

logger = logging.getLogger(__name__)

#: How long a worker waits for the main process to answer a model request.
REPLY_TIMEOUT_S = 600.0


class RemotePredictor:
    """A :class:`~secondreader.model.predictor.Predictor` whose model lives in another process."""

    def __init__(self, card: ModelCard, index: int, worker_id: int, requests: Any, replies: Any) -> None:
        self.card = card
        self._index = index
        self._worker_id = worker_id
        self._requests = requests
        self._replies = replies

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        self._requests.put((self._worker_id, self._index, batch.detach().cpu().numpy(), explain))
        try:
            status, payload = self._replies.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            raise ModelError(f"model {self.card.ref}: no answer from the main process") from None
        if status != "ok":
            raise ModelError(f"model {self.card.ref}: inference failed ({payload})")
        return [Prediction(logits=logits, saliency=saliency) for logits, saliency in payload]


def _worker_main(worker_id: int, cards: list[ModelCard], stage: StageOptions, secret: bytes, log_level: str,
                 tasks: Any, results: Any, requests: Any, replies: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what Ctrl-C stops
    torch.set_num_threads(1)
    configure_logging(log_level)
    set_secret(secret)
    predictors = [RemotePredictor(card, i, worker_id, requests, replies) for i, card in enumerate(cards)]
    auditor = StudyAuditor(predictors, stage)
    while True:
        task = tasks.get()
        if task is None:
            return
        results.put(("start", worker_id, task.key))
        results.put(("done", worker_id, task.key, auditor.audit(task)))


class LocalEngine:
    """Worker processes (``spec.workers``) around one batched model per bundle in this process."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.stats = EngineStats()

    def run(self, tasks: Iterable[StudyTask], on_result: OnResult) -> None:
        t0 = time.perf_counter()
        spec = self.spec
        # The workers already keep every core busy: on the CPU, the model's intra-op threads would
        # only fight them (on 2 cores, 2 torch threads made small batches 40x slower).
        torch_threads = torch.get_num_threads()
        cpus = os.cpu_count() or 1
        if spec.device == "cpu" or (spec.device == "auto" and not torch.cuda.is_available()):
            torch.set_num_threads(max(1, cpus - spec.workers))
        models = [BatchingPredictor(load_predictor(d, device=spec.device),
                                    max_batch=spec.max_batch, max_wait_ms=spec.max_wait_ms)
                  for d in spec.model_dirs]
        ctx = mp.get_context("spawn")  # never fork a process that holds torch threads
        task_q: Any = ctx.Queue()
        result_q: Any = ctx.Queue()
        request_q: Any = ctx.Queue()
        replies: list[Any] = [ctx.Queue() for _ in range(spec.workers)]
        cards = [m.card for m in models]
        serving = ThreadPoolExecutor(max_workers=spec.workers, thread_name_prefix="audit-model")

        def serve(request: tuple[int, int, np.ndarray, bool]) -> None:
            worker_id, index, array, explain = request
            try:
                out = models[index].predict(torch.from_numpy(array), explain=explain)
                replies[worker_id].put(("ok", [(p.logits, p.saliency) for p in out]))
            except Exception as exc:  # noqa: BLE001 - handed back to the waiting worker as a ModelError
                replies[worker_id].put(("error", type(exc).__name__))

        def server() -> None:
            while True:
                request = request_q.get()
                if request is None:
                    return
                serving.submit(serve, request)

        server_thread = threading.Thread(target=server, name="audit-model-server", daemon=True)
        server_thread.start()

        def start(worker_id: int) -> SpawnProcess:
            process = ctx.Process(target=_worker_main, name=f"audit-worker-{worker_id}", daemon=True,
                                  args=(worker_id, cards, spec.stage, spec.secret, spec.log_level, task_q, result_q,
                                        request_q, replies[worker_id]))
            process.start()
            return process

        workers = {i: start(i) for i in range(spec.workers)}
        self.stats.startup_s = time.perf_counter() - t0
        current: dict[int, str] = {}
        pending: dict[str, StudyTask] = {}
        source = iter(tasks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < 2 * spec.workers:
                    task = next(source, None)
                    if task is None:
                        exhausted = True
                        break
                    pending[task.key] = task
                    task_q.put(task)
                if exhausted and not pending:
                    break
                try:
                    message = result_q.get(timeout=0.5)
                except queue.Empty:
                    self._replace_dead(workers, current, pending, replies, ctx, start, on_result)
                    continue
                if message[0] == "start":
                    current[message[1]] = message[2]
                else:
                    _, worker_id, key, rows = message
                    current.pop(worker_id, None)
                    task = pending.pop(key, None)
                    if task is not None:
                        on_result(task, rows)
            for _ in workers:
                task_q.put(None)
            for process in workers.values():
                process.join(timeout=30)
        finally:
            for process in workers.values():
                if process.is_alive():
                    process.terminate()
            for process in workers.values():
                process.join(timeout=10)
            request_q.put(None)
            server_thread.join(timeout=10)
            serving.shutdown(wait=False, cancel_futures=True)
            torch.set_num_threads(torch_threads)
            for model in models:
                self.stats.batches += model.stats.batches
                self.stats.images += model.stats.images
                model.close()

    @staticmethod
    def _replace_dead(workers: dict[int, SpawnProcess], current: dict[int, str], pending: dict[str, StudyTask],
                      replies: list[Any], ctx: Any, start: Any, on_result: OnResult) -> None:
        for worker_id, process in list(workers.items()):
            if process.is_alive():
                continue
            key = current.pop(worker_id, None)
            logger.error("audit worker %d died (exit code %s); starting another", worker_id, process.exitcode)
            if key is not None and key in pending:
                task = pending.pop(key)
                on_result(task, [failed_row(task, "the worker process crashed while screening this study")])
            replies[worker_id] = ctx.Queue()
            workers[worker_id] = start(worker_id)
