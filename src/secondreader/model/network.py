"""Build the MONAI network a model card (or a training config) names. No I/O."""

from __future__ import annotations

from typing import Any

import monai.networks.nets as nets
import torch

__all__ = ["ALLOWED_NETWORKS", "DENSE_NETWORKS", "build_network"]

#: MONAI classes a card may name (an allow-list: a card is data, not code to import): classifiers ...
ALLOWED_NETWORKS = ("ResNet", "DenseNet", "DenseNet121", "EfficientNetBN", "SEResNet50")
#: ... and dense networks (a logit per pixel and finding: localisation models).
DENSE_NETWORKS = ("UNet", "BasicUNet", "AttentionUnet", "FlexibleUNet")


def build_network(network_class: str, args: dict[str, Any], *, dense: bool = False) -> torch.nn.Module:
    """A new (untrained) ``network_class`` built with ``args``: a classifier from
    :data:`ALLOWED_NETWORKS`, or with ``dense`` a dense network from :data:`DENSE_NETWORKS`.
    Any other class is refused (ValueError)."""
    allowed = DENSE_NETWORKS if dense else ALLOWED_NETWORKS
    if network_class not in allowed:
        raise ValueError(f"{'dense ' if dense else ''}network class must be one of {allowed}, not {network_class!r}")
    module: torch.nn.Module = getattr(nets, network_class)(**args)
    return module
