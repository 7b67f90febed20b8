"""Build the MONAI network a model card names. No I/O."""

from __future__ import annotations

from typing import Any

import monai.networks.nets as nets
import torch

__all__ = ["ALLOWED_NETWORKS", "build_network"]

#: MONAI classes a card may name (an allow-list: a card is data, not code to import).
ALLOWED_NETWORKS = ("ResNet", "DenseNet", "DenseNet121", "EfficientNetBN", "SEResNet50")


def build_network(network_class: str, args: dict[str, Any]) -> torch.nn.Module:
    if network_class not in ALLOWED_NETWORKS:
        raise ValueError(f"network class must be one of {ALLOWED_NETWORKS}, not {network_class!r}")
    cls = getattr(nets, network_class)
    module: torch.nn.Module = cls(**args)
    return module
