"""The audit's checkpoint: an append-only JSON Lines file in the output folder.

Each line is one finished task and its rows, written with flush + fsync before the task counts as
done, so an interrupted run (Ctrl-C, a crash, a killed machine) loses at most the tasks in flight.
A torn last line (the machine died mid-write) is dropped on the next start. ``checkpoint.json``
records what the rows depend on (model versions, the reports file, options that change rows); a
rerun with a different configuration refuses to mix rows, unless the caller starts afresh.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import InvalidInputError
from ..fileio import atomic_path

__all__ = ["Checkpoint", "CheckpointMismatchError"]

logger = logging.getLogger(__name__)


class CheckpointMismatchError(InvalidInputError):
    """The output folder holds a checkpoint made with other models, reports or options."""


class Checkpoint:
    FILE = "checkpoint.jsonl"
    META = "checkpoint.json"

    def __init__(self, out_dir: Path, meta: dict[str, Any], *, fresh: bool = False) -> None:
        self.out_dir = out_dir
        self.path = out_dir / self.FILE
        self.meta_path = out_dir / self.META
        self.meta = meta
        self.done: dict[str, list[dict[str, Any]]] = {}
        self._stream: IO[str] | None = None
        out_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.path.unlink(missing_ok=True)
            self.meta_path.unlink(missing_ok=True)
        if self.meta_path.is_file():
            stored = json.loads(self.meta_path.read_text())
            different = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
            if different:
                raise CheckpointMismatchError(
                    f"the output folder holds an audit made with other {', '.join(different)}: "
                    "use another --out, or --fresh to start over")
        else:
            with atomic_path(self.meta_path) as tmp:
                tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self._load()

    def reload(self) -> None:
        """Read the finished tasks back from disk (after an interrupt, the file is the truth: a line
        may be on disk whose task the interrupted process had not yet counted)."""
        self.close()
        self.done = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):
            logger.warning("checkpoint: dropping a torn last line (the previous run was cut off mid-write)")
            with open(self.path, "r+b") as stream:
                stream.truncate(good)
        for line in data[:good].decode("utf-8").splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            self.done[entry["task"]] = entry["rows"]

    def __contains__(self, task_key: str) -> bool:
        return task_key in self.done

    def rows(self) -> list[dict[str, Any]]:
        return [row for rows in self.done.values() for row in rows]

    def append(self, task_key: str, rows: Sequence[dict[str, Any]]) -> None:
        """Record a finished task durably (flush + fsync) before it counts as done."""
        if self._stream is None:
            self._stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._stream.write(json.dumps({"task": task_key, "rows": list(rows)}, separators=(",", ":")) + "\n")
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self.done[task_key] = list(rows)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
