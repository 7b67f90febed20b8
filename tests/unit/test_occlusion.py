"""The batched occlusion sensitivity (used on CUDA) against MONAI's own (used on the CPU)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.networks.nets import ResNet
from monai.visualize import OcclusionSensitivity

from secondreader.model.predictor import occlusion_maps, occlusion_windows


def _net(seed: int, classes: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[8, 8, 16, 16], spatial_dims=2,
                  n_input_channels=1, conv1_t_size=3, conv1_t_stride=1, no_max_pool=True,
                  num_classes=classes).eval()


@pytest.mark.parametrize(("size", "mask", "overlap"), [((28, 28), 7, 0.5), ((32, 24), 5, 0.25), ((20, 20), 6, 0.0)])
def test_batched_occlusion_matches_monai(size: tuple[int, int], mask: int, overlap: float) -> None:
    net = _net(sum(size) + mask, classes=2)
    x = torch.randn(3, 1, *size, generator=torch.Generator().manual_seed(mask))
    monai_occ = OcclusionSensitivity(nn_module=net, mask_size=mask, overlap=overlap, mode="mean_img", n_batch=1024,
                                     activate=False, verbose=False)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        expected = torch.stack([monai_occ(x[i:i + 1])[0][0] for i in range(3)])
        # small chunks, so several network calls are stitched together
        got = occlusion_maps(net, x, mask_size=mask, overlap=overlap, max_images_per_call=17)
    assert got.shape == (3, 2, *size)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the maps really vary (a constant map would also have matched a constant expectation)
    assert float(got.std()) > 0


def test_windows_cover_the_image_and_end_on_its_edge() -> None:
    corners = occlusion_windows((28, 28), 7, 0.5)
    rows = sorted({r for r, _ in corners})
    assert rows == [0, 3, 6, 9, 12, 15, 18, 21]
    assert len(corners) == 64
    assert occlusion_windows((30, 28), 7, 0.5)[-1] == (23, 21)


def test_the_predictors_batched_path_gives_the_monai_path_answers() -> None:
    from secondreader.config import default_models_dir
    from secondreader.model.predictor import TorchPredictor

    bundle = default_models_dir() / "cxr-pneumonia"
    monai_path = TorchPredictor.from_bundle(bundle, device="cpu")
    batched = TorchPredictor(monai_path.card, device="cpu", batched_occlusion=True)
    base = torch.rand(4, 1, 7, 7, generator=torch.Generator().manual_seed(5))
    x = torch.nn.functional.interpolate(base, size=(28, 28), mode="bilinear") * 3 - 1.5
    for want, got in zip(monai_path.predict(x), batched.predict(x), strict=True):
        np.testing.assert_allclose(got.logits, want.logits, rtol=1e-6, atol=1e-6)
        assert want.saliency is not None and got.saliency is not None and want.saliency.max() == 1.0
        np.testing.assert_allclose(got.saliency, want.saliency, atol=1e-4)
