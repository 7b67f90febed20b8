"""The CUDA inference path against the CPU one (fp32 reference); runs with ``-m gpu``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from secondreader.config import default_models_dir
from secondreader.explain.heatmap import heatmap_on_source
from secondreader.model.card import find_bundles, load_card
from secondreader.model.predictor import TorchPredictor
from secondreader.preprocessing import GeometryRecord

pytestmark = [pytest.mark.gpu, pytest.mark.weights]

ALL_BUNDLES = find_bundles(default_models_dir())
BUNDLES = [b for b in ALL_BUNDLES if load_card(b).saliency.method != "dense"]  # TorchPredictor's
DENSE_BUNDLES = [b for b in ALL_BUNDLES if load_card(b).saliency.method == "dense"]


def _inputs(bundle_size: tuple[int, int], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth, image-like inputs in the normalised range (pure noise makes every map flat)
    base = torch.rand(n, 1, 8, 8, generator=g)
    return torch.nn.functional.interpolate(base, size=bundle_size, mode="bilinear") * 2 - 1


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_cuda_fp32_matches_the_cpu(bundle: Path) -> None:
    cpu = TorchPredictor.from_bundle(bundle, device="cpu")
    gpu = TorchPredictor.from_bundle(bundle, device="cuda", precision="fp32")
    x = _inputs(cpu.card.input_spec.size, 5, seed=1)
    want, got = cpu.predict(x), gpu.predict(x)
    for w, g in zip(want, got, strict=True):
        # cuDNN runs fp32 convolutions in TF32 by default: close, not bit-equal
        np.testing.assert_allclose(g.logits, w.logits, atol=1e-2, rtol=1e-2)
        if w.saliency is not None and w.saliency.max() > 0:
            assert g.saliency is not None and g.saliency.shape == w.saliency.shape
            assert _corr(g.saliency, w.saliency) > 0.97


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_cuda_bf16_stays_close_to_fp32(bundle: Path) -> None:
    ref = TorchPredictor.from_bundle(bundle, device="cuda", precision="fp32")
    bf16 = TorchPredictor.from_bundle(bundle, device="cuda")
    assert bf16.precision == "bf16"
    x = _inputs(ref.card.input_spec.size, 8, seed=2)
    for r, b in zip(ref.predict(x), bf16.predict(x), strict=True):
        np.testing.assert_allclose(b.logits, r.logits, atol=0.15, rtol=0.05)
        if r.saliency is not None and r.saliency.max() > 0:
            assert b.saliency is not None
            assert _corr(b.saliency, r.saliency) > 0.8


@pytest.mark.parametrize("bundle", DENSE_BUNDLES, ids=[b.name for b in DENSE_BUNDLES])
def test_dense_models_on_cuda_match_the_cpu(bundle: Path) -> None:
    from secondreader.model.dense import load_predictor

    cpu, gpu = load_predictor(bundle, device="cpu"), load_predictor(bundle, device="cuda")
    x = _inputs(cpu.card.input_spec.size, 3, seed=4)
    for w, g in zip(cpu.predict(x), gpu.predict(x), strict=True):
        np.testing.assert_allclose(g.logits, w.logits, atol=2e-2, rtol=2e-2)


def test_compiled_padded_batches_give_the_eager_answers() -> None:
    bundle = BUNDLES[0]
    eager = TorchPredictor.from_bundle(bundle, device="cuda", precision="fp32")
    compiled = TorchPredictor.from_bundle(bundle, device="cuda", precision="fp32", compile=True, batch_sizes=(4,))
    assert compiled.warmup_seconds > 0
    x = _inputs(eager.card.input_spec.size, 7, seed=3)  # 4 + 3 (padded to 4)
    for e, c in zip(eager.predict(x), compiled.predict(x), strict=True):
        np.testing.assert_allclose(c.logits, e.logits, atol=1e-2, rtol=1e-2)


def test_heatmap_resampling_on_the_gpu_equals_the_cpu() -> None:
    geometry = GeometryRecord.centre_square(1955, 1841, (28, 28))
    saliency = np.random.default_rng(0).random((28, 28), dtype=np.float32)
    np.testing.assert_allclose(heatmap_on_source(saliency, geometry, device="cuda"),
                               heatmap_on_source(saliency, geometry), atol=1e-5)
