"""Fitting one dense network: the loss, the batches of an epoch, hard negatives, checkpoints.

:func:`fit_dense_network` trains a U-Net (the config's network) on some of a pool's pictures: AdamW
with a one-cycle schedule, batches drawn from one seeded generator (:func:`.augment.training_batch`;
or prepared ahead by ``schedule.loader_workers`` threads, each batch from its own seed), false peaks
of the model's own maps mined as hard negatives at the configured epochs
(:func:`mine_hard_negatives`), and its state kept after every epoch (:class:`FitCheckpoints`) so
that ``--resume`` continues where a run stopped with the weights an uninterrupted fit gives.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...fileio import atomic_path
from ...model.dense import MapRecipe, map_peaks
from ...model.network import build_network
from ...preprocessing import InputSpec
from ..common import init_source, to_layout, training_device, training_memory_format
from ..config import LesionConfig, TrainConfig
from ..losses import Loss, build_loss
from .augment import training_batch
from .data import Pool
from .evaluate import predict_maps
from .inputs import standardise

__all__ = ["BUILT_IN_DENSE_LOSS", "FitCheckpoints", "FitInterrupted", "dense_loss", "fit_dense_network", "map_recipe",
           "mine_hard_negatives"]

logger = logging.getLogger(__name__)


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, dice_weight: float,
          pos_weight: float = 1.0) -> torch.Tensor:
    """Weighted binary cross-entropy (nodule pixels ``pos_weight`` times) plus a soft Dice over the
    batch (pixels of weight 0 ignored)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none",
                                             pos_weight=torch.tensor(pos_weight, device=logits.device))
    bce = (bce * weight).sum() / weight.sum().clamp_min(1.0)
    p = torch.sigmoid(logits) * weight
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + (target * weight).sum() + 1)
    return bce + dice_weight * dice


#: the built-in dense loss, as bundles and cards name it
BUILT_IN_DENSE_LOSS = "binary cross-entropy (nodule pixels pos_weight times) + dice_weight x soft Dice over the batch"


def dense_loss(cfg: TrainConfig) -> Loss:
    """The fit's loss: the config's MONAI terms, or the built-in one the shipped bundles trained with."""
    if cfg.loss is not None:
        return build_loss(cfg.loss)
    lc = cfg.lesions
    assert lc is not None

    def built_in(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        assert weight is not None
        return _loss(logits, target, weight, lc.dice_weight, lc.pos_weight)

    return built_in


def map_recipe(cfg: TrainConfig) -> MapRecipe:
    """The config's map recipe (smoothing, flip averaging), as the bundle's card will serve it."""
    return MapRecipe(cfg.saliency.smoothing_sigma, cfg.saliency.flip_average)


def _seed_of(*parts: int) -> int:
    """A generator seed for one batch (or one epoch's order) of a fit: the fit's seed, the epoch, the step."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _seeded_batch(pool: Pool, idx: np.ndarray, lc: LesionConfig, spec: InputSpec, seed: int,
                  hard: Sequence[Sequence[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return training_batch(pool, idx, lc, spec, torch.Generator().manual_seed(seed), hard)


_Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _marks(hard: dict[int, list[tuple[int, int]]], idx: np.ndarray) -> Sequence[Sequence[tuple[int, int]]]:
    return [hard.get(int(i), []) for i in idx] if hard else ()


def _drawn_batches(pool: Pool, steps: list[np.ndarray], lc: LesionConfig, spec: InputSpec, g: torch.Generator,
                   hard: dict[int, list[tuple[int, int]]], threads: int) -> Iterator[_Batch]:
    """The batches of one epoch drawn in turn from the fit's one generator, in the step's thread
    (``loader_workers: 0``): the per-image augmentation on one thread (its small convolutions were 50x
    slower on two threads of a 2-core CPU than on one), the step on ``threads``."""
    for idx in steps:
        torch.set_num_threads(1)
        batch = training_batch(pool, idx, lc, spec, g, _marks(hard, idx))
        torch.set_num_threads(threads)
        yield batch


def _loaded_batches(loader: ThreadPoolExecutor, window: int, pool: Pool, steps: list[np.ndarray], lc: LesionConfig,
                    spec: InputSpec, hard: dict[int, list[tuple[int, int]]], seeds: list[int]) -> Iterator[_Batch]:
    """The batches of one epoch prepared ahead by ``loader``'s threads, each from its own seed, so
    that they do not depend on how many threads prepare them; at most ``window`` wait at a time."""
    ahead: deque[Future[_Batch]] = deque()
    todo = iter(zip(steps, seeds, strict=True))

    def submit() -> None:
        nxt = next(todo, None)
        if nxt is not None:
            ahead.append(loader.submit(_seeded_batch, pool, nxt[0], lc, spec, nxt[1], _marks(hard, nxt[0])))

    for _ in range(window):
        submit()
    while ahead:
        batch = ahead.popleft().result()
        submit()
        yield batch


#: A mined false peak must lie this many model pixels beyond a nodule's radius.
_HARD_MARGIN = 3.0


def mine_hard_negatives(network: torch.nn.Module, pool: Pool, members: np.ndarray, spec: InputSpec, *,
                        recipe: MapRecipe, floor: float = 0.0, per_image: int = 4) -> dict[int, list[tuple[int, int]]]:
    """The model's false peaks on the real backgrounds' pictures among ``members``: up to
    ``per_image`` strongest local maxima of the smoothed logit map at or over ``floor`` that are
    farther than a nodule's radius (+3 px) from every inserted nodule and lie where the label is
    known (weight 1). ``{pool index: [(row, col), ...]}``; pictures without any are left out."""
    real = members[pool.groups[members] >= 0]
    out: dict[int, list[tuple[int, int]]] = {}
    for start in range(0, len(real), 32):
        idx = np.sort(real[start:start + 32])
        x = standardise(torch.from_numpy(pool.images[idx].astype(np.float32))[:, None], spec)
        for i, logit_map in zip(idx, predict_maps(network, x, recipe=recipe), strict=True):
            found = []
            for row, col, _value in map_peaks(logit_map, floor=floor):
                r, c = int(row), int(col)
                near = any(math.hypot(row - n.row, col - n.col) <= n.radius + _HARD_MARGIN for n in pool.nodules[i])
                if not near and pool.weights[i][r, c]:
                    found.append((r, c))
                if len(found) == per_image:
                    break
            if found:
                out[int(i)] = found
    return out


class FitInterrupted(Exception):
    """A fit stopped after ``stop_after_epochs`` (tests: what an interruption leaves behind)."""


@dataclass(frozen=True, slots=True)
class FitCheckpoints:
    """Where a run's fits keep their state after every epoch (``run_dir/fits``): the weights, the
    optimiser and schedule, the batch generator and the mined hard negatives. With ``resume`` a fit
    continues from its file when the run's digest and the fit's seed match, and ends with the weights
    an uninterrupted fit gives. ``stop_after_epochs`` (tests) raises :class:`FitInterrupted` once
    that epoch's state is saved."""

    folder: Path
    digest: str
    resume: bool = False
    stop_after_epochs: int | None = None


def _save_fit(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def fit_dense_network(cfg: TrainConfig, pool: Pool, members: np.ndarray, spec: InputSpec, seed: int,
                      advance: Callable[[], None], checkpoints: FitCheckpoints | None = None,
                      name: str = "") -> torch.nn.Module:
    """A network fitted on the pool's ``members``, left on the training device in eval mode. The
    batches and their augmentation are drawn on the CPU from one seeded generator, so a GPU run sees
    the same crops as a CPU run; only the arithmetic differs. With ``checkpoints`` its state is kept
    after every epoch in ``<folder>/<name>.pt`` (see :class:`FitCheckpoints`)."""
    lc = cfg.lesions
    assert lc is not None
    device, amp = training_device(cfg.schedule.device, cfg.schedule.mixed_precision)
    torch.manual_seed(seed)
    network = build_network(cfg.network.class_, cfg.network.args, dense=True)
    if cfg.init_from is not None:  # fine-tuning: every fit (folds included) starts from the shipped weights
        source = init_source(cfg, dense=True)
        assert source is not None
        network.load_state_dict(torch.load(source.weights_path, map_location="cpu", weights_only=True))
    sched = cfg.schedule
    layout = training_memory_format(sched.channels_last)
    to_layout(network, layout, device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=sched.max_lr, weight_decay=sched.weight_decay)
    steps_per_epoch = max(1, len(members) // sched.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=sched.max_lr,
                                                    total_steps=sched.epochs * steps_per_epoch)
    loss_fn = dense_loss(cfg)
    g = torch.Generator().manual_seed(seed)
    # the network's steps use ``schedule.threads``; the per-image augmentation runs on one thread
    # (its small convolutions were 50x slower on two threads of this CPU than on one)
    threads = torch.get_num_threads()
    hard: dict[int, list[tuple[int, int]]] = {}
    first_epoch = 0
    saved = checkpoints.folder / f"{name}.pt" if checkpoints is not None else None
    if checkpoints is not None and saved is not None and checkpoints.resume and saved.is_file():
        state = torch.load(saved, map_location="cpu", weights_only=True)
        if state["config"] == checkpoints.digest and state["seed"] == seed:
            network.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
            g.set_state(state["generator"])
            hard = {int(k): [(int(r), int(c)) for r, c in v] for k, v in state["hard"].items()}
            first_epoch = int(state["epoch"])
            for _ in range(first_epoch * steps_per_epoch):
                advance()
            logger.info("fit %s: resumed after epoch %d", name, first_epoch)
        else:
            logger.info("fit %s: its checkpoint was made by another configuration; starting again", name)
    network.train()
    loader = ThreadPoolExecutor(sched.loader_workers, thread_name_prefix="batches") if sched.loader_workers else None
    try:
        for epoch in range(first_epoch, sched.epochs):
            if lc.hard_negative_fraction > 0 and epoch in lc.hard_negative_epochs:
                torch.set_num_threads(threads)
                hard = mine_hard_negatives(network, pool, members, spec, recipe=map_recipe(cfg))
                network.train()  # predict_maps left it in eval mode
                logger.debug("epoch %d: false peaks on %d pictures", epoch, len(hard))
            if loader is None:
                order = members[torch.randperm(len(members), generator=g).numpy()]
            else:
                order = members[torch.randperm(len(members),
                                               generator=torch.Generator().manual_seed(_seed_of(seed, epoch))).numpy()]
            steps = [np.sort(order[step * sched.batch_size:(step + 1) * sched.batch_size])
                     for step in range(steps_per_epoch)]
            if loader is None:
                batches = _drawn_batches(pool, steps, lc, spec, g, hard, threads)
            else:
                batches = _loaded_batches(loader, 2 * sched.loader_workers, pool, steps, lc, spec, hard,
                                          [_seed_of(seed, epoch, step) for step in range(len(steps))])
            for xc, tc, wc in batches:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = network(xc.to(device, memory_format=layout))
                loss = loss_fn(out.float(), tc.to(device), wc.to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                scheduler.step()
                advance()
            if checkpoints is not None and saved is not None:
                _save_fit(saved, {"config": checkpoints.digest, "seed": seed, "epoch": epoch + 1,
                                  "model": network.state_dict(), "optimiser": optimiser.state_dict(),
                                  "scheduler": scheduler.state_dict(), "generator": g.get_state(),
                                  "hard": {str(k): [list(p) for p in v] for k, v in hard.items()}})
                if checkpoints.stop_after_epochs is not None and epoch + 1 >= checkpoints.stop_after_epochs \
                        and epoch + 1 < sched.epochs:
                    raise FitInterrupted(f"fit {name} stopped after epoch {epoch + 1} as asked")
    finally:
        if loader is not None:
            loader.shutdown(cancel_futures=True)
    # scored in the layout it is served in, so that calibration and figures come from serving's logits
    to_layout(network, torch.contiguous_format)
    return network.eval()
