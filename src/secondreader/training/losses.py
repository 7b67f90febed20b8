"""Training losses named in a config: terms from ``monai.losses``, weighted and summed.

A config's ``loss:`` lists the terms; without it a recipe keeps its built-in loss (cross-entropy for a
classifier; weighted cross-entropy plus a soft Dice for a dense map), whose weights the shipped bundles
were trained with. Dense recipes carry a per-pixel weight (0 where the label is unknown, for example a
real opacity nobody has read), so every term must honour it:

- a loss whose ``forward`` takes ``mask`` (``MaskedDiceLoss``) gets the weight as its mask;
- any other loss is built with ``reduction="none"`` and must then give one value per pixel
  (``FocalLoss`` does); those values are averaged over the weighted pixels.

A loss that cannot be masked either way (``DiceLoss`` reduces over the image itself) is refused when
the loss is built, with the masked form to use instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import monai.losses
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Loss", "LossConfig", "LossTerm", "build_loss", "describe_loss"]

#: ``(logits, target, weight or None) -> scalar``; shapes (N, C, ...), weight broadcastable to them
Loss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class LossTerm(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    class_: str = Field(alias="class", description="a class of monai.losses, for example FocalLoss or MaskedDiceLoss")
    args: dict[str, Any] = Field(default_factory=dict, description="its constructor's arguments")
    weight: float = Field(1.0, gt=0, description="the term's weight in the sum")

    @field_validator("class_")
    @classmethod
    def _a_monai_loss(cls, name: str) -> str:
        found = getattr(monai.losses, name, None)
        if not (inspect.isclass(found) and issubclass(found, torch.nn.Module)):
            raise ValueError(f"{name!r} is not a loss class of monai.losses")
        return name


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terms: list[LossTerm] = Field(min_length=1, description="summed, each times its weight")

    @model_validator(mode="after")
    def _buildable(self) -> LossConfig:
        _probe(self, build_loss(self))  # arguments, shapes and masking checked once, when the config is read
        return self


def _term(term: LossTerm) -> Loss:
    cls = getattr(monai.losses, term.class_)
    if "mask" in inspect.signature(cls.forward).parameters:
        try:
            masked = cls(**term.args)
        except TypeError as exc:
            raise ValueError(f"loss {term.class_}: its arguments do not fit: {exc}") from None

        def with_mask(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
            mask = torch.ones_like(logits[:, :1]) if weight is None else weight.expand_as(logits[:, :1])
            return masked(logits, target, mask=mask)  # type: ignore[no-any-return]

        return with_mask
    if "reduction" in term.args:
        raise ValueError(f"loss {term.class_}: leave out 'reduction': its values are averaged per pixel over the "
                         "pixels whose label is known")
    if "reduction" not in inspect.signature(cls.__init__).parameters:
        raise ValueError(f"loss {term.class_} has no per-pixel form (reduction='none')")
    try:
        per_pixel = cls(**term.args, reduction="none")
    except TypeError as exc:
        raise ValueError(f"loss {term.class_}: its arguments do not fit: {exc}") from None

    def weighted_mean(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        values = per_pixel(logits, target)
        if values.shape != logits.shape:
            raise ValueError(f"loss {term.class_} gives values of shape {tuple(values.shape)}, not one per pixel "
                             f"{tuple(logits.shape)}, so pixels of unknown label cannot be left out: use its masked "
                             "form (MaskedDiceLoss) or a per-pixel loss (FocalLoss)")
        if weight is None:
            return values.mean()  # type: ignore[no-any-return]
        w = weight.expand_as(values)
        return (values * w).sum() / w.sum().clamp_min(1.0)  # type: ignore[no-any-return]

    return weighted_mean


def build_loss(cfg: LossConfig) -> Loss:
    """The configured sum of MONAI losses, as one ``(logits, target, weight) -> loss`` function (a
    validated :class:`LossConfig` has been tried on a small batch, so one that cannot be masked fails
    when the config is read, before training)."""
    terms = [(_term(t), t.weight) for t in cfg.terms]

    def loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        total = torch.zeros((), device=logits.device)
        for fn, w in terms:
            total = total + w * fn(logits, target, weight)
        return total

    return loss


def _probe(cfg: LossConfig, loss: Loss) -> None:
    """Check the rule every term must keep on a small batch: one number, and pixels of unknown label
    (weight 0) neither change it nor get a gradient. A loss that mixes a whole-image term into its
    per-pixel values (``DiceFocalLoss``: its Dice part is per image) fails here, before training."""
    names = " + ".join(t.class_ for t in cfg.terms)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.7).float()
    weight = torch.ones_like(target)
    weight[0, :, :4, :4] = 0
    x = logits.clone().requires_grad_(True)
    value = loss(x, target, weight)
    if value.dim() != 0:
        raise ValueError(f"loss {names} gives values of shape {tuple(value.shape)}, not one number")
    value.backward()  # type: ignore[no-untyped-call]
    changed = logits.clone()
    changed[0, :, :4, :4] += 3.0
    leaks = (x.grad is not None and float(x.grad[0, :, :4, :4].abs().max()) > 0) or not torch.allclose(
        loss(changed, target, weight), value.detach(), atol=1e-6)
    if leaks:
        raise ValueError(f"loss {names} lets pixels of unknown label count: a term reduces over the image itself "
                         "(DiceLoss, the Dice part of DiceFocalLoss); use MaskedDiceLoss beside a per-pixel loss "
                         "(FocalLoss)")


def describe_loss(cfg: LossConfig | None, built_in: str) -> str:
    """One line for a bundle and its card: the terms with their arguments, or the recipe's built-in loss."""
    if cfg is None:
        return built_in
    parts = []
    for t in cfg.terms:
        args = ", ".join(f"{k}={v!r}" for k, v in t.args.items())
        parts.append(f"{'' if t.weight == 1 else f'{t.weight:g} x '}monai.losses.{t.class_}({args})")
    return " + ".join(parts)
