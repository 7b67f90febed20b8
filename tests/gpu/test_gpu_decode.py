"""GPU JPEG 2000 decoding (nvImageCodec) gives the CPU decoder's pixels; runs with ``-m gpu``."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless

from secondreader.dicom.gpu_decode import GpuJpeg2000Decoder, availability, decode_frames
from secondreader.dicom.instance import CxrInstance
from secondreader.dicom.pixels import decode_display
from secondreader.errors import CorruptPixelDataError
from tests.conftest import require
from tests.factories import chest_phantom, make_cxr_dataset, to_bytes

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def decoder() -> GpuJpeg2000Decoder:
    ok, reason = availability()
    require(ok, f"GPU decoding unavailable: {reason}")
    return GpuJpeg2000Decoder()


def _j2k(rows: int, cols: int, bits: int, seed: int, frames: int = 1) -> pydicom.Dataset:
    noisy = chest_phantom(rows, cols, seed=seed)
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(to_bytes(make_cxr_dataset(
        rows, cols, bits_stored=bits, pixels=noisy, transfer_syntax=JPEG2000Lossless, frames=frames))))


@pytest.mark.parametrize(("rows", "cols", "bits", "frames"), [(2048, 2048, 12, 1), (700, 840, 16, 1),
                                                              (512, 512, 10, 3)])
def test_lossless_gpu_pixels_equal_the_cpu_decoder(decoder: GpuJpeg2000Decoder, rows: int, cols: int, bits: int,
                                                    frames: int) -> None:
    ds = _j2k(rows, cols, bits, seed=rows + bits, frames=frames)
    inst = CxrInstance.from_dataset(ds)
    gpu = decode_frames(ds, inst, decoder=decoder)
    assert gpu is not None, "the GPU did not decode the codestream (is nvidia-nvjpeg2k-cu13 installed?)"
    cpu = ds.pixel_array.reshape(frames, rows, cols)
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
    assert int(cpu.max()) > (1 << (bits - 1))  # real content, not a blank image
    np.testing.assert_array_equal(gpu, cpu)


def test_a_batch_of_studies_in_one_call_and_the_real_rg1_cr(decoder: GpuJpeg2000Decoder) -> None:
    datasets = [_j2k(1024, 1024, 12, seed=s) for s in range(6)]
    try:
        from pydicom.data import get_testdata_file

        rg1 = get_testdata_file("RG1_J2KR.dcm")
    except (ImportError, ValueError):
        rg1 = None
    if rg1 is not None:
        datasets.append(pydicom.dcmread(rg1))
    streams = [next(generate_frames(ds.PixelData, number_of_frames=1)) for ds in datasets]
    decoded = decoder.decode(streams)
    for ds, arr in zip(datasets, decoded, strict=True):
        assert arr is not None
        np.testing.assert_array_equal(arr, ds.pixel_array)


def test_display_pipeline_is_the_same_and_corrupt_data_still_gets_its_reason(decoder: GpuJpeg2000Decoder) -> None:
    ds = _j2k(1024, 900, 12, seed=3)
    inst = CxrInstance.from_dataset(ds)
    gpu = decode_display(ds, inst, max_pixels=10**8, gpu_decode=True)
    cpu = decode_display(ds, inst, max_pixels=10**8, gpu_decode=False)
    np.testing.assert_array_equal(gpu.frames, cpu.frames)
    broken = _j2k(256, 256, 12, seed=4)
    codestream = next(generate_frames(broken.PixelData, number_of_frames=1))
    broken.PixelData = encapsulate([codestream[:60]])  # the main header and nothing more
    with pytest.raises(CorruptPixelDataError, match="JPEG 2000"):
        decode_display(broken, CxrInstance.from_dataset(broken), max_pixels=10**8, gpu_decode=True)
