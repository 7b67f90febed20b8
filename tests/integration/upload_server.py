"""The service's ``/v1`` app behind uvicorn in a process of its own, for the tests that measure what
one upload costs that process (peak RSS, files left behind): ``python -m tests.integration.upload_server
--home H --port P --key K --max-upload-mib N``.

The real pneumonia model is loaded (as in the in-process service tests); no background loop runs,
so received instances stay in the spool, unscreened.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import uvicorn

from secondreader.config import default_models_dir
from secondreader.model.predictor import TorchPredictor
from secondreader.service.auth import ApiKeyMiddleware
from secondreader.service.core import ScreeningService
from secondreader.service.http import build_app
from secondreader.store import Store

MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--max-upload-mib", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    torch.set_num_threads(1)
    home: Path = args.home
    store = Store(f"sqlite:///{home / 'sr.db'}")
    store.migrate()
    predictor = TorchPredictor.from_bundle(default_models_dir() / "cxr-pneumonia", device="cpu")
    core = ScreeningService(store, [predictor], home=home, max_image_pixels=64_000_000, workers=1)
    limit = args.max_upload_mib * MIB
    app = ApiKeyMiddleware(build_app(lambda: core, max_upload_bytes=lambda: limit), keys=[args.key])
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    finally:
        core.close()


if __name__ == "__main__":
    main()
