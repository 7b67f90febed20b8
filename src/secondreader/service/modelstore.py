"""MONAI bundles ↔ the BentoML model store.

``secondreader serve`` (and the service on its first start) imports every bundle under
``SECONDREADER_MODELS_DIR`` into the BentoML model store as ``<name>:<version>``, the whole bundle
(metadata, state-dict weights, model card) as the model's files; a bundle already there with the
same weights and metadata is left alone, one with other weights or metadata under the same version
(a scope or default mode added to its card) replaces it. The service
references the shipped bundles as ``bentoml.models.BentoModel`` class attributes, so ``bentoml
build`` packs them into the bento, and loads the weights from the store path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from ..config import default_models_dir
from ..model.card import ModelCard, find_bundles, load_card

__all__ = ["import_bundle", "import_bundles", "shipped_tag", "store_tag"]

logger = logging.getLogger(__name__)


def store_tag(card: ModelCard) -> str:
    return f"{card.name}:{card.version}"


def shipped_tag(name: str) -> str:
    """The store tag of the bundle ``name`` in ``SECONDREADER_MODELS_DIR`` (contract 5), else in this
    repository's (or image's) ``models/``."""
    models_dir = os.environ.get("SECONDREADER_MODELS_DIR")
    return store_tag(load_card((Path(models_dir) if models_dir else default_models_dir()) / name))


def _weights_sha(card: ModelCard) -> str:
    return str(card.metadata["secondreader"].get("weights_sha256", ""))


def _metadata_sha(bundle_dir: Path) -> str:
    return hashlib.sha256((bundle_dir / "configs" / "metadata.json").read_bytes()).hexdigest()


def import_bundle(bundle_dir: Path) -> str:
    """Import one bundle (idempotent); returns its store tag."""
    card = load_card(bundle_dir)
    tag = store_tag(card)
    metadata_sha = _metadata_sha(bundle_dir)
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        same_weights = existing.info.metadata.get("weights_sha256") == _weights_sha(card)
        if same_weights and existing.info.metadata.get("metadata_sha256") == metadata_sha:
            return tag
        logger.warning("model %s in the store has other %s; replacing it", tag,
                       "metadata" if same_weights else "weights")
        bentoml.models.delete(tag)
    metadata = {"weights_sha256": _weights_sha(card), "metadata_sha256": metadata_sha, "device_uid": card.device_uid,
                "findings": ",".join(f.code for f in card.findings)}
    with bentoml.models.create(tag, labels={"project": "secondreader", "kind": "monai-bundle"},
                               metadata=metadata) as model:
        shutil.copytree(bundle_dir, model.path, dirs_exist_ok=True)
    logger.info("imported model bundle %s into the BentoML model store", tag)
    return tag


def import_bundles(models_dir: Path) -> list[str]:
    return [import_bundle(bundle) for bundle in find_bundles(models_dir)]


if __name__ == "__main__":  # python -m secondreader.service.modelstore [MODELS_DIR]  (before `bentoml build`)
    import sys

    for imported in import_bundles(Path(sys.argv[1]) if len(sys.argv) > 1 else default_models_dir()):
        sys.stdout.write(imported + "\n")
