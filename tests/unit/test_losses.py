"""Losses named in a training config (terms of monai.losses): masking by the per-pixel label weight,
and the losses that cannot be masked refused with the form to use instead."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from secondreader.training.losses import LossConfig, build_loss, describe_loss


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 1, 16, 16, generator=g)
    target = (torch.rand(3, 1, 16, 16, generator=g) > 0.9).float()
    weight = torch.ones(3, 1, 16, 16)
    weight[1, :, 4:10, 4:10] = 0  # a region of unknown label
    return logits, target, weight


def test_focal_loss_without_focus_is_the_cross_entropy_over_the_known_pixels() -> None:
    logits, target, weight = _batch()
    loss = build_loss(LossConfig.model_validate({"terms": [{"class": "FocalLoss", "args": {"gamma": 0.0}}]}))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = (bce * weight).sum() / weight.sum()
    assert torch.allclose(loss(logits, target, weight), expected, atol=1e-6)
    # focusing lowers the loss of the confident pixels, so the mean falls
    focused = build_loss(LossConfig.model_validate({"terms": [{"class": "FocalLoss", "args": {"gamma": 2.0}}]}))
    assert float(focused(logits, target, weight)) < float(expected)


@pytest.mark.parametrize("term", [{"class": "FocalLoss", "args": {"gamma": 2.0}},
                                  {"class": "MaskedDiceLoss", "args": {"sigmoid": True, "batch": True}}])
def test_pixels_of_unknown_label_neither_count_nor_get_a_gradient(term: dict) -> None:  # type: ignore[type-arg]
    logits, target, weight = _batch()
    loss = build_loss(LossConfig.model_validate({"terms": [term]}))
    changed = logits.clone()
    changed[1, :, 4:10, 4:10] += 5.0  # what the model says where nobody knows the answer
    assert torch.allclose(loss(logits, target, weight), loss(changed, target, weight), atol=1e-6)
    x = logits.clone().requires_grad_(True)
    loss(x, target, weight).backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    assert float(x.grad[1, :, 4:10, 4:10].abs().max()) == 0.0
    assert float(x.grad[0].abs().max()) > 0.0
    # without the mask the same pixels do count
    assert not torch.allclose(loss(logits, target, None), loss(changed, target, None))


def test_terms_are_summed_with_their_weights() -> None:
    logits, target, weight = _batch()
    focal = {"class": "FocalLoss", "args": {"gamma": 2.0}}
    dice = {"class": "MaskedDiceLoss", "args": {"sigmoid": True, "batch": True}}
    one = build_loss(LossConfig.model_validate({"terms": [focal]}))(logits, target, weight)
    two = build_loss(LossConfig.model_validate({"terms": [dice]}))(logits, target, weight)
    both = build_loss(LossConfig.model_validate({"terms": [focal, {**dice, "weight": 0.5}]}))
    assert torch.allclose(both(logits, target, weight), one + 0.5 * two)


def test_a_classifier_loss_takes_one_value_per_image() -> None:
    loss = build_loss(LossConfig.model_validate({"terms": [{"class": "FocalLoss", "args": {"gamma": 0.0}}]}))
    logits, labels = torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([[1.0], [0.0], [0.0]])
    assert torch.allclose(loss(logits, labels, None), F.binary_cross_entropy_with_logits(logits, labels))


def test_losses_that_cannot_be_masked_or_are_not_monai_losses_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"DiceLoss .*not one per pixel.*MaskedDiceLoss"):
        build_loss(LossConfig.model_validate({"terms": [{"class": "DiceLoss", "args": {"sigmoid": True}}]}))
    # its per-pixel values carry a whole-image Dice: they pass the shape check but leak the unknown pixels
    with pytest.raises(ValueError, match="DiceFocalLoss lets pixels of unknown label count"):
        LossConfig.model_validate({"terms": [{"class": "DiceFocalLoss", "args": {"sigmoid": True}}]})
    with pytest.raises(ValueError, match="not one number"):
        LossConfig.model_validate({"terms": [{"class": "MaskedDiceLoss", "args": {"reduction": "none"}}]})
    with pytest.raises(ValueError, match="its arguments do not fit"):
        LossConfig.model_validate({"terms": [{"class": "FocalLoss", "args": {"gamm": 2.0}}]})
    with pytest.raises(ValueError, match="leave out 'reduction'"):
        build_loss(LossConfig.model_validate({"terms": [{"class": "FocalLoss", "args": {"reduction": "sum"}}]}))
    with pytest.raises(ValidationError, match="'CrossEntropy' is not a loss class of monai.losses"):
        LossConfig.model_validate({"terms": [{"class": "CrossEntropy"}]})
    with pytest.raises(ValidationError, match="terms"):
        LossConfig.model_validate({"terms": []})


def test_the_bundle_names_the_loss_it_trained_with() -> None:
    cfg = LossConfig.model_validate({"terms": [{"class": "FocalLoss", "args": {"gamma": 2.0}},
                                               {"class": "MaskedDiceLoss", "args": {"sigmoid": True}, "weight": 0.5}]})
    assert describe_loss(cfg, "built-in") == ("monai.losses.FocalLoss(gamma=2.0) + "
                                              "0.5 x monai.losses.MaskedDiceLoss(sigmoid=True)")
    assert describe_loss(None, "built-in") == "built-in"
