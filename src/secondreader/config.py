"""Settings (contract 5): environment variables with the ``SECONDREADER_`` prefix.

Built once at each entry point; components receive typed values, never this object.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from .model.modes import ModelMode
    from .outputs.provenance import SeriesSettings

__all__ = ["Settings", "default_models_dir", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether a bind address or host name is this machine only (``localhost``, 127.0.0.0/8, ::1):
    the defaults that are safe there (no API key, any calling AE title) are refused elsewhere."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_models_dir() -> Path:
    """The ``models/`` folder of the repository (or of an installed copy that ships one)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "models"
        if (candidate / "cxr-pneumonia" / "configs" / "metadata.json").is_file():
            return candidate
    return Path.cwd() / "models"


class Settings(BaseSettings):
    """Runtime settings; every default makes the single-machine setup work unconfigured."""

    model_config = SettingsConfigDict(env_prefix="SECONDREADER_", extra="ignore")

    home: Path = Field(Path(".secondreader"), description="State folder: spool, store, artefacts, quarantine")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite under home")
    api_keys: str | None = Field(None, description="Comma-separated API keys (Authorization: Bearer KEY)")
    dicom_port: int = Field(11112, description="DICOM receiver port")
    dicom_ae_title: str = Field("SECONDREADER", description="DICOM receiver AE title")
    dicom_allowed_aes: str = Field("*", description="Calling AE titles accepted; * = any (loopback only)")
    pacs_destination: str | None = Field(None, description="AE@host:port or DICOMweb base URL")
    study_stable_seconds: float = Field(5.0, description="A study is complete after this long without news")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Model arithmetic: auto (bf16 autocast on CUDA, fp32 on the CPU), "
                           "fp32, or bf16 (CUDA only)")
    compile_models: bool = Field(False, description="torch.compile the networks on CUDA, compiled and warmed up "
                                 "at start for batch shapes 1-64 (slower start, faster batches)")
    gpu_decode: bool = Field(
        True, description="Decode JPEG 2000 on the GPU (nvImageCodec) when it and a CUDA device are present; "
        "else, or for a frame the GPU cannot decode, the CPU decoders")
    models_dir: Path = Field(default_factory=default_models_dir, description="MONAI bundles folder")
    host: str = Field("127.0.0.1", description="HTTP bind address")
    http_port: int = Field(3000, description="HTTP port")
    hl7_port: int = Field(2575, description="HL7 v2 MLLP port")
    secret: str | None = Field(None, description="Key for pseudonymous study keys in logs; default: generated "
                               "once and kept in home (SQLite), or in the shared store (PostgreSQL), so every "
                               "replica uses the same one")
    storage_url: str | None = Field(
        None, description="Where the spool, received instances and artefacts live: a local folder (default: home), "
        "or s3://bucket/prefix shared by replicas (needs the s3 extra: pip install 'secondreader[s3]')")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph RGW, SeaweedFS); credentials from the standard "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION; default: the client's own (AWS)")
    lease_seconds: float = Field(60.0, ge=3, le=3600, description="How long a replica's claim on a job or an "
                                 "outbox row holds unless renewed; after that any replica takes the work over")
    poll_seconds: float = Field(1.0, gt=0, le=60, description="How often a replica renews its leases, looks for "
                                "stable received studies, and, when idle, claims queued or abandoned jobs")
    max_upload_mb: int = Field(512, ge=1, description="Size limit in MiB of an HTTP upload and of one C-STORE "
                               "data set (a larger one aborts its association)")
    max_image_pixels: int = Field(
        64_000_000, description="Largest Rows x Columns x Frames decoded; larger images fail before allocation"
    )
    routing_rules: Path | None = Field(None, description="Routing rules file; default: packaged rules")
    model_modes: str | None = Field(
        None, description="Per-model mode at this site: name=MODE pairs, comma-separated (cxr-nodule=live,"
        "cxr-pneumonia=off), a JSON object, or a YAML file; MODE is live (findings route studies), shadow "
        "(computed and shown, never routing) or off (not run). A model not named runs in its card's default "
        "mode (shadow for a model that missed its targets)")
    screen_workers: int = Field(4, ge=1, le=256, description="Service threads that decode and screen studies "
                                "(they share the batched models; more keep a GPU fed)")
    encode_workers: int | None = Field(None, ge=1, le=256, description="Service threads that write overlays and "
                                       "DICOM outputs after a study is answered; default screen_workers")
    dicom_max_associations: int = Field(16, ge=1, le=1000,
                                        description="Concurrent DICOM associations accepted; more are rejected")
    dicom_max_associations_per_address: int = Field(
        8, ge=1, le=1000, description="Concurrent DICOM connections accepted from one peer address (pending or "
        "associated); more are closed at once")
    dicom_idle_seconds: float = Field(
        5.0, gt=0, le=300, description="A DICOM connection must send its first byte within this long, and its "
        "whole association request within this long again, or it is closed (until then it holds no association "
        "slot)")
    dicom_tls_cert: Path | None = Field(None, description="PEM certificate: the DICOM receiver speaks TLS only")
    dicom_tls_key: Path | None = Field(None, description="PEM private key of dicom_tls_cert")
    dicom_tls_ca: Path | None = Field(None, description="PEM CA bundle: callers must present a certificate it signed")
    auth_max_failures: int = Field(10, ge=1, description="Failed API-key attempts per client address per window "
                                   "before it gets 429")
    auth_window_seconds: float = Field(60.0, gt=0, description="Window of auth_max_failures, and how long a "
                                       "client address is then refused")
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses or networks (10.0.0.0/8) of reverse proxies whose "
        "X-Forwarded-For is believed; none by default, so the failed-key limit and the access log use the "
        "connecting peer's address (uvicorn's default of trusting loopback is overridden)")
    series_number_sc: int = Field(9901, description="Series Number of the Secondary Capture overlays")
    series_number_seg: int = Field(9902, description="Series Number of the heatmap Segmentations")
    series_number_sr: int = Field(9903, description="Series Number of the TID 1500 reports")
    series_description_prefix: str = Field("AI RESULT", description="Series descriptions of the outputs start so")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            raise ValueError(f"SECONDREADER_DEVICE must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        if value and "://" in value and not value.startswith(("s3://", "file://")):
            raise ValueError("SECONDREADER_STORAGE_URL must be a local folder or s3://bucket/prefix")
        if value and value.startswith("s3://") and len(value.rstrip("/")) <= 5:
            raise ValueError("SECONDREADER_STORAGE_URL s3:// needs a bucket: s3://bucket or s3://bucket/prefix")
        return value

    @model_validator(mode="after")
    def _check_leases(self) -> Settings:
        if self.poll_seconds * 3 > self.lease_seconds:
            raise ValueError("SECONDREADER_LEASE_SECONDS must be at least three SECONDREADER_POLL_SECONDS "
                             "(leases are renewed while polling)")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("SECONDREADER_DICOM_TLS_CERT and SECONDREADER_DICOM_TLS_KEY go together")
        if self.dicom_tls_ca is not None and self.dicom_tls_cert is None:
            raise ValueError("SECONDREADER_DICOM_TLS_CA needs SECONDREADER_DICOM_TLS_CERT and _KEY")
        return self

    @field_validator("model_modes")
    @classmethod
    def _check_model_modes(cls, value: str | None) -> str | None:
        from .model.modes import parse_model_modes

        parse_model_modes(value)  # ValueError naming what is wrong
        return value

    def resolved_model_modes(self) -> dict[str, ModelMode]:
        """``model_modes`` as ``{model name: mode}`` (empty: every model in its card's default)."""
        from .model.modes import parse_model_modes

        return parse_model_modes(self.model_modes)

    @field_validator("precision", mode="before")
    @classmethod
    def _check_precision(cls, value: str) -> str:
        if value not in ("auto", "fp32", "bf16"):
            raise ValueError(f"SECONDREADER_PRECISION must be auto, fp32 or bf16, not {value!r}")
        return value

    def output_series(self) -> SeriesSettings:
        from .outputs.provenance import SeriesSettings

        return SeriesSettings(self.series_number_sc, self.series_number_seg, self.series_number_sr,
                              self.series_description_prefix)

    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'secondreader.db'}"

    def resolved_secret(self) -> bytes:
        """The log-pseudonym key: the setting, else a random key kept in ``home``."""
        if self.secret:
            return self.secret.encode()
        import secrets

        path = self.home / "secret.key"
        if path.is_file():
            return path.read_bytes()
        self.home.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32).encode()
        path.write_bytes(key)
        path.chmod(0o600)
        return key
