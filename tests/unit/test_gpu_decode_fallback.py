"""Without nvImageCodec or a CUDA device, GPU decoding steps aside and the CPU decodes."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from secondreader.dicom import gpu_decode
from secondreader.dicom.instance import CxrInstance
from secondreader.dicom.pixels import decode_display
from tests.factories import make_cxr_dataset, to_bytes


def test_fallback_to_the_cpu_decoder_when_the_gpu_path_is_unavailable() -> None:
    ok, reason = gpu_decode.availability()
    if ok:
        pytest.skip("this machine can decode on the GPU (tests/gpu covers it)")
    assert reason  # says why, e.g. "no CUDA device"
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(to_bytes(
        make_cxr_dataset(128, 96, transfer_syntax=JPEG2000Lossless))))
    inst = CxrInstance.from_dataset(ds)
    assert gpu_decode.gpu_decodable(inst)
    assert gpu_decode.decode_frames(ds, inst) is None
    with pytest.raises(RuntimeError, match="not available"):
        gpu_decode.GpuJpeg2000Decoder()
    image = decode_display(ds, inst, max_pixels=10**7, gpu_decode=True)
    cpu = decode_display(ds, inst, max_pixels=10**7, gpu_decode=False)
    assert image.frames.shape == (1, 128, 96) and float(image.frames.max()) > float(image.frames.min())
    np.testing.assert_array_equal(image.frames, cpu.frames)
