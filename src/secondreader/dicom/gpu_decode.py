"""JPEG 2000 decoding on the GPU with nvImageCodec (nvJPEG2000), the CPU decoder as fallback.

On a GPU machine, decoding JPEG 2000 on the CPU caps the service far below what the model can
do (lossless chest CR: about 15 images/s on 16 CPU processes against about 220 on one GPU). This
module decodes the frames of JPEG 2000 and HTJ2K instances with ``nvidia-nvimgcodec-cu13`` and
``nvidia-nvjpeg2k-cu13`` when both are installed and a CUDA device is present.

Only GPU backends are enabled, so nvImageCodec never falls back to its own CPU decoder silently
(it does when nvJPEG2000 is missing): a frame the GPU cannot decode gives ``None`` here, and the
caller decodes the instance with pydicom's CPU decoders instead (the one path that raises the
precise "codestream is corrupt" errors). The module imports cleanly without nvImageCodec, CUDA or
torch's CUDA build.

Scope: single-sample (MONOCHROME1/2), unsigned, Bits Allocated 8 or 16; everything else stays on
the CPU. Lossless codestreams decode to exactly the CPU decoder's values (``tests/gpu``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from .instance import CxrInstance

__all__ = ["GPU_TRANSFER_SYNTAXES", "GpuJpeg2000Decoder", "availability", "configure", "decode_frames", "enabled",
           "gpu_decodable", "shared_decoder"]

logger = logging.getLogger(__name__)

#: JPEG 2000 (lossless and lossy) and HTJ2K transfer syntaxes that nvJPEG2000 decodes.
GPU_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
})


def availability() -> tuple[bool, str]:
    """Whether GPU decoding can run here, and why not when it cannot (no PHI, no paths)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return False, "nvidia-nvimgcodec-cu13 is not installed"
    except OSError as exc:  # a shared library it needs is missing
        return False, f"nvImageCodec cannot load ({type(exc).__name__})"
    return True, "nvImageCodec with a CUDA device"


def gpu_decodable(inst: CxrInstance) -> bool:
    """``True`` when this instance's pixel data is a kind the GPU path handles."""
    return (
        str(inst.transfer_syntax_uid) in GPU_TRANSFER_SYNTAXES
        and (inst.samples_per_pixel or 1) == 1
        and inst.bits_allocated in (8, 16)
        and not inst.pixel_representation
    )


class GpuJpeg2000Decoder:
    """Batched JPEG 2000 decoding on one CUDA device (thread-safe: calls are serialised).

    Raises
    ------
    RuntimeError
        When nvImageCodec or a CUDA device is not available (see :func:`availability`).
    """

    def __init__(self, *, device_id: int = 0) -> None:
        ok, reason = availability()
        if not ok:
            raise RuntimeError(f"GPU decoding is not available: {reason}")
        from nvidia import nvimgcodec

        self._codec: Any = nvimgcodec
        backends = [nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY),
                    nvimgcodec.Backend(nvimgcodec.BackendKind.HYBRID_CPU_GPU)]
        self._decoder = nvimgcodec.Decoder(device_id=device_id, backends=backends)
        self._params = nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.UNCHANGED)
        self._lock = threading.Lock()
        self.device_id = device_id

    def decode_device(self, codestreams: Sequence[bytes]) -> list[Any | None]:
        """Decode a batch in one call; nvImageCodec images left on the GPU (``None`` where a
        codestream could not be decoded there). Each supports ``__cuda_array_interface__`` and
        DLPack (``torch.from_dlpack``)."""
        if not codestreams:
            return []
        with self._lock:
            images: list[Any | None] = self._decoder.decode(
                [self._codec.CodeStream(bytes(c)) for c in codestreams], params=self._params)
        return images

    def decode(self, codestreams: Sequence[bytes]) -> list[np.ndarray | None]:
        """Decode a batch in one call and copy each image to the host: 2-D arrays (rows, cols)."""
        out: list[np.ndarray | None] = []
        for image in self.decode_device(codestreams):
            if image is None:
                out.append(None)
                continue
            arr = np.asarray(image.cpu())
            out.append(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        return out


_enabled = True


def configure(enabled: bool) -> None:
    """Entry points call this once with ``Settings.gpu_decode``. On by default: decoding uses the
    GPU whenever :func:`availability` allows (nothing changes on a machine without one)."""
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    """The process setting made by :func:`configure`."""
    return _enabled


_shared: GpuJpeg2000Decoder | None = None
_shared_failed = False
_shared_lock = threading.Lock()


def shared_decoder() -> GpuJpeg2000Decoder | None:
    """The process's decoder, made on first use; ``None`` (logged once) when GPU decoding is not
    available here."""
    global _shared, _shared_failed
    with _shared_lock:
        if _shared is None and not _shared_failed:
            ok, reason = availability()
            if not ok:
                _shared_failed = True
                logger.info("JPEG 2000 is decoded on the CPU: %s", reason)
                return None
            try:
                _shared = GpuJpeg2000Decoder()
                logger.info("JPEG 2000 is decoded on the GPU (nvImageCodec)")
            except (RuntimeError, OSError, AttributeError) as exc:
                _shared_failed = True
                logger.warning("JPEG 2000 is decoded on the CPU: %s", exc)
        return _shared


def decode_frames(ds: Dataset, inst: CxrInstance, *, decoder: GpuJpeg2000Decoder | None = None) -> np.ndarray | None:
    """Stored values of every frame, (frames, rows, cols), decoded on the GPU in one batch.

    Returns ``None`` when the instance is not GPU-decodable, GPU decoding is not available, or
    any frame fails there: the caller then decodes on the CPU (which reports corrupt data).
    """
    if not gpu_decodable(inst) or inst.rows is None or inst.columns is None:
        return None
    decoder = decoder or shared_decoder()
    if decoder is None:
        return None
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=inst.number_of_frames))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # malformed encapsulation: the CPU path names the problem
    if len(frames) != inst.number_of_frames:
        return None
    try:
        decoded = decoder.decode(frames)
    except (RuntimeError, ValueError) as exc:
        logger.warning("GPU decoding failed (%s); the CPU decoder takes the instance", type(exc).__name__)
        return None
    dtype = np.uint8 if inst.bits_allocated == 8 else np.uint16
    out = np.empty((len(frames), inst.rows, inst.columns), dtype=dtype)
    for i, arr in enumerate(decoded):
        if arr is None or arr.shape != (inst.rows, inst.columns) or arr.dtype.itemsize > out.itemsize:
            logger.warning("a JPEG 2000 frame did not decode on the GPU; the CPU decoder takes the instance")
            return None
        out[i] = arr
    # pydicom applies no unused-bit correction to unsigned JPEG 2000 data either: values as decoded.
    return out
