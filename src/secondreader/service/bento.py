"""The BentoML service: ``bentoml serve secondreader.service.bento:SecondReader`` (what
``secondreader serve`` runs). ``serving/service.py`` re-exports it for ``bentoml build``.

One model copy per worker process, loaded in ``__init__``; ``/readyz`` is true once it is loaded
and unfinished jobs were re-queued. Routes with path parameters live in the Starlette app mounted
at ``/v1`` (BentoML api routes cannot take path parameters); the API-key middleware covers all of
them, BentoML's health and metrics routes excepted.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path

import bentoml

with bentoml.importing():
    from secondreader.config import Settings, is_loopback
    from secondreader.dicom import gpu_decode
    from secondreader.dicom.samples import sample_paths
    from secondreader.dicom.scp import server_ssl_context, start_receiver
    from secondreader.errors import ModelError
    from secondreader.logsafe import configure_logging, set_secret
    from secondreader.model.batcher import BatchingPredictor
    from secondreader.model.card import load_card
    from secondreader.model.dense import predictor_for
    from secondreader.model.modes import site_modes
    from secondreader.reports.firstread import ReportIn
    from secondreader.reports.hl7 import Hl7Listener
    from secondreader.service import metrics
    from secondreader.service.access import install_access_log_filter
    from secondreader.service.auth import ApiKeyMiddleware, FailedAuthLimiter, TrustedProxies, parse_keys
    from secondreader.service.core import Leases, ScreeningService, Upload
    from secondreader.service.http import build_app
    from secondreader.service.modelstore import import_bundles, shipped_tag
    from secondreader.service.storage import open_storage
    from secondreader.store import Store
    from secondreader.viewer import viewer_app
    from secondreader.worklist import load_rules

logger = logging.getLogger("secondreader.service")


def _settings() -> Settings:
    return Settings()


# uvicorn (inside BentoML's worker) rewrites a request's client address from X-Forwarded-For when
# the peer is in FORWARDED_ALLOW_IPS, loopback by default: anything on the host (a sidecar,
# `kubectl port-forward`) could then name any address, escape the failed-key limit, lock out another
# address and forge the access log. Only SECONDREADER_TRUSTED_PROXIES is trusted (none by default);
# the worker imports this module before it configures uvicorn.
os.environ["FORWARDED_ALLOW_IPS"] = _settings().trusted_proxies.strip()


def _shipped(name: str) -> bentoml.models.BentoModel | None:
    """A class-level reference to the shipped bundle ``name`` (so that ``bentoml build`` packs it),
    or None where this models folder does not hold it (a site may ship fewer models)."""
    try:
        return bentoml.models.BentoModel(shipped_tag(name))
    except ModelError:
        return None


v1 = build_app(lambda: bentoml.get_current_service().core,
               max_upload_bytes=lambda: _settings().max_upload_bytes())

# One GPU per worker is declared; without one the same service runs on the CPU
# (SECONDREADER_DEVICE=auto picks it).
_RESOURCES = {"gpu": 1}


@bentoml.asgi_app(v1, path="/v1")
@bentoml.asgi_app(viewer_app(), path="/viewer")  # the radiologist's page (static; data from /v1)
# BentoML's access log prints request paths, which hold study UIDs; uvicorn's access log (path
# redacted by our logging filter) is kept instead. BentoML's traffic metrics label requests with
# their paths too: off, and /metrics is served by metrics.MetricsMiddleware (route templates only).
@bentoml.service(name="secondreader", resources=_RESOURCES, workers=1,
                 traffic={"timeout": 600, "concurrency": 256}, logging={"access": {"enabled": False}},
                 metrics={"enabled": False})
class SecondReader:
    """Screening over HTTP; the models are loaded once per worker, from the BentoML model store."""

    pneumonia = _shipped("cxr-pneumonia")
    pneumonia_adult = _shipped("cxr-pneumonia-adult")
    nodule = _shipped("cxr-nodule")

    def __init__(self) -> None:
        settings = _settings()
        configure_logging(os.environ.get("SECONDREADER_LOG_LEVEL", "INFO"))
        gpu_decode.configure(settings.gpu_decode)  # JPEG 2000 on the GPU where nvImageCodec and CUDA are
        install_access_log_filter()
        store = Store(settings.resolved_database_url())
        store.migrate()  # under an advisory lock on PostgreSQL: replicas starting together take turns
        set_secret(self._secret(settings, store))
        storage = open_storage(settings.storage_url, home=settings.home, endpoint_url=settings.s3_endpoint_url)
        storage.check()  # a wrong URL or key stops the start, not the first C-STORE
        if store.backend != "sqlite" and not storage.shared:
            logger.warning("the store is shared (%s) but the spool and artefacts are on this machine: replicas "
                           "need SECONDREADER_STORAGE_URL=s3://bucket/prefix", store.backend)
        # `secondreader serve` imports the bundles of SECONDREADER_MODELS_DIR into the model store
        # before BentoML starts (BentoML checks class-level model references at start-up); here the
        # import is a no-op check that also covers other bundles in that folder. Every model is
        # loaded from its store path; the class attribute makes `bentoml build` carry the bundle.
        predictors = []
        for tag in import_bundles(Path(settings.models_dir)):
            predictor = predictor_for(load_card(Path(bentoml.models.get(tag).path)), device=settings.device,
                                      precision=settings.precision, compile=settings.compile_models)
            predictors.append(BatchingPredictor(predictor, max_batch=32, max_wait_ms=10.0,
                                                on_batch=metrics.batch_size))
        # each model's mode at this site: SECONDREADER_MODEL_MODES over the card's default (unknown
        # names are warned about, bad modes stopped the start already, in Settings)
        modes = site_modes([p.card for p in predictors], settings.resolved_model_modes())
        for predictor in predictors:
            metrics.model_loaded(predictor.card.name, predictor.card.version, modes[predictor.card.name].value)
        self.core = ScreeningService(store, predictors, home=settings.home,
                                     max_image_pixels=settings.max_image_pixels,
                                     workers=settings.screen_workers, encode_workers=settings.encode_workers,
                                     pacs_destination=settings.pacs_destination,
                                     calling_ae=settings.dicom_ae_title, series=settings.output_series(),
                                     routing=load_rules(settings.routing_rules), modes=modes,
                                     storage=storage, leases=Leases(lease_seconds=settings.lease_seconds,
                                                                    poll_seconds=settings.poll_seconds))
        self.core.resume_unfinished()
        self.core.start_background(stable_seconds=settings.study_stable_seconds)
        self.core.refresh_metrics()
        allowed = [a.strip() for a in settings.dicom_allowed_aes.split(",")]
        if "*" in allowed and not is_loopback(settings.host):
            raise RuntimeError("SECONDREADER_DICOM_ALLOWED_AES must list calling AE titles off loopback")
        tls = (server_ssl_context(settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca)
               if settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None else None)
        self.receiver = start_receiver(settings.host, settings.dicom_port, settings.dicom_ae_title, allowed,
                                       self.core.receive, max_associations=settings.dicom_max_associations,
                                       ssl_context=tls, quarantine=self.core.quarantine,
                                       max_dataset_bytes=settings.max_upload_bytes(),
                                       max_per_address=settings.dicom_max_associations_per_address,
                                       idle_seconds=settings.dicom_idle_seconds)
        # First reads over HL7 v2 (ORU^R01 over MLLP), into the same worklist as POST /v1/reports;
        # each message once per sending source and control ID, in the store every replica shares.
        self.hl7 = Hl7Listener(settings.host, settings.hl7_port, self._first_read, ledger=self.core.store)
        self.hl7.start()
        if os.environ.get("SECONDREADER_SCREEN_SAMPLES") == "1":
            threading.Thread(target=self._screen_samples, daemon=True).start()

    @staticmethod
    def _secret(settings: Settings, store: Store) -> bytes:
        """The log-pseudonym key: the setting; else, with a store replicas share, one kept in that
        store (the first replica makes it), so study keys agree across replicas; else one kept in
        home."""
        if settings.secret:
            return settings.secret.encode()
        if store.backend != "sqlite":
            return store.shared_setting("pseudonym_secret", lambda: secrets.token_hex(32)).encode()
        return settings.resolved_secret()

    def _first_read(self, report: ReportIn) -> None:
        self.core.worklist.add_report(report, actor="hl7")

    def _screen_samples(self) -> None:
        uploads = [Upload(p.name, p.read_bytes()) for p in sample_paths()]
        if uploads:
            job = self.core.submit(uploads)
            record = self.core.wait(job, 600)
            logger.info("sample studies screened: %s", record.status if record else "unknown")

    def __is_ready__(self) -> bool:
        return bool(self.core.ready)

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def shutdown(self) -> None:
        self.hl7.stop()
        self.receiver.stop()
        self.core.close()


# Outermost of ours: /metrics and request metrics by route template (BentoML's are off, above).
SecondReader.add_asgi_middleware(metrics.MetricsMiddleware)  # type: ignore[attr-defined]
SecondReader.add_asgi_middleware(  # type: ignore[attr-defined]
    ApiKeyMiddleware, keys=lambda: parse_keys(_settings().api_keys),
    limiter=FailedAuthLimiter(_settings().auth_max_failures, _settings().auth_window_seconds),
    trusted_proxies=TrustedProxies(_settings().trusted_proxies),
)
