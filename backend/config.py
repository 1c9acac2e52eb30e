"""One typed Settings object, read from the environment (prefix STUDIO_)."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STUDIO_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Datasets, models, checkpoints and the embedded database.")
    storage_url: str = Field(
        "",
        description="Where datasets, models, checkpoints and artifacts are stored: empty for data_dir, or "
        "s3://bucket/prefix for an S3-compatible bucket (credentials from the usual AWS_* variables).",
    )
    s3_endpoint_url: str = Field(
        "", description="Endpoint of an S3-compatible server (MinIO: http://minio:9000); empty means AWS S3."
    )
    s3_public_endpoint_url: str = Field(
        "",
        description="The S3 endpoint as browsers reach it, for presigned download URLs (their signature covers "
        "the host); empty means STUDIO_S3_ENDPOINT_URL.",
    )
    s3_presigned_downloads: bool = Field(
        False,
        description="Answer artifact downloads with a redirect to a presigned URL of the bucket (the browser "
        "must reach the S3 endpoint) instead of streaming them through the API.",
    )
    cache_dir: str = Field(
        "", description="Local copies of what a process reads from S3 storage; empty means data_dir/cache."
    )
    cache_max_bytes: int = Field(
        50 * 1024**3,
        ge=1024**2,
        description="Size the cache may grow to before the least recently used copies are removed.",
    )
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    broker_url: str = Field("", description="Celery broker; empty means kombu's SQLAlchemy transport on SQLite.")
    redis_url: str = Field("", description="Redis for live event fan-out; empty means database polling.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    admin_email: str = "admin@localhost"
    admin_password: str = Field("", description="Password of the first admin; empty means a random one.")
    session_days: int = Field(14, ge=1, le=365)
    # A worker that has not beaten its heart for this long is presumed dead; its work is queued again.
    lease_seconds: int = Field(
        120, ge=2, description="How long a worker may stay silent before its work is taken back and queued again."
    )
    max_attempts: int = Field(
        4,
        ge=1,
        le=100,
        description="Workers that may die on one piece of work (a job, an export, ...) before it fails: each lost "
        "lease queues it again until then.",
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        gt=0,
        description="How long a training worker asked to stop (SIGTERM) has to checkpoint its job and give it back.",
    )
    redeliver_seconds: float = Field(
        60.0, gt=0, description="Queued work no worker claimed for this long is sent to the broker again."
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a worker renews its lease on a job.")
    reap_interval_seconds: float = Field(30.0, gt=0, description="How often the API looks for expired leases.")
    poll_seconds: float = Field(0.5, gt=0, le=1.0, description="Database polling interval for live updates.")
    max_upload_bytes: int = Field(2 * 1024**3, ge=1024, description="Largest dataset file accepted (413 above).")
    # Dataset validation limits: each bounds the memory one record can take while a file is read.
    max_line_bytes: int = Field(
        16 * 1024**2,
        ge=1024,
        description="Longest line (JSONL record, CSV row, text line) and longest single record (a JSON array "
        "element, a text paragraph) in a dataset file, in bytes (413 above).",
    )
    max_json_depth: int = Field(64, ge=4, le=500, description="Deepest nesting of objects/arrays in a JSON record.")
    max_decompressed_bytes: int = Field(
        8 * 1024**3, ge=1024, description="Largest decompressed size of a gzipped dataset file (413 above)."
    )
    max_compression_ratio: float = Field(
        100.0,
        gt=1,
        description="Largest decompressed/compressed size ratio of a gzipped dataset (past its first 8 MiB): "
        "a guard against gzip bombs.",
    )
    long_record_bytes: int = Field(64 * 1024, ge=1, description="Records larger than this get a warning.")
    label_imbalance_ratio: float = Field(
        10.0, gt=1, description="Warn when the most frequent label outnumbers the rarest by more than this."
    )
    max_model_upload_bytes: int = Field(
        64 * 1024**3,
        ge=1024,
        description="Largest base-model upload (a zip of a Hugging Face directory or a .gguf file), and the "
        "largest a zip may extract to (413 above).",
    )
    hub_endpoint: str = Field("https://huggingface.co", description="Hugging Face Hub the workers download from.")
    hub_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a worker waits for the Hub to answer before a hub import fails."
    )
    worker_name: str = ""
    max_running_jobs_per_user: int = Field(
        0,
        ge=0,
        description="Training jobs one user may have running at once; more wait queued (0: no limit).",
    )
    data_parallel_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes a training worker runs each job with (data parallel, one per device); 0 means one "
        "per CUDA GPU, or 1 without CUDA. Above 1 on CPU, the processes talk over gloo.",
    )
    cookie_secure: bool = Field(
        False,
        description="Mark every cookie Secure (sent over HTTPS only) even on requests that came over plain HTTP, "
        "e.g. behind a TLS-terminating proxy that does not send X-Forwarded-Proto. Without it, cookies are Secure "
        "whenever the request came over HTTPS (or X-Forwarded-Proto says so and trust_proxy is on).",
    )
    trust_proxy: bool = Field(
        False,
        description="Believe X-Forwarded-Proto, X-Forwarded-Host and X-Forwarded-For: turn on only behind a "
        "reverse proxy that sets them (and strips what clients send). The app's own origin (CSRF check), Secure "
        "cookies and the client address (login throttling) then come from them instead of the connection.",
    )

    metrics_token: str = Field(
        "",
        description="Bearer token Prometheus sends to scrape the API's /metrics (Authorization: Bearer ...). Empty: "
        "/metrics is closed.",
    )
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of a worker's own /metrics (Prometheus); 0 means none. `studio up` gives its analysis "
        "worker the next port.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1",
        description="Address a worker's /metrics listens on: this machine only by default (it has no token); "
        "0.0.0.0 on a private network Prometheus scrapes from.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: the usual human lines; json: one JSON object per line (with job_id in a job)."
    )

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> "Settings":
        # A lease shorter than a few heartbeats would let the reaper take work from a live worker between beats.
        if self.lease_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                f"STUDIO_LEASE_SECONDS ({self.lease_seconds}) must be at least 3 x STUDIO_HEARTBEAT_SECONDS "
                f"({self.heartbeat_seconds})"
            )
        return self

    @model_validator(mode="after")
    def _storage_url_is_s3(self) -> "Settings":
        url = urlsplit(self.storage_url)
        if self.storage_url and (url.scheme != "s3" or not url.netloc):
            raise ValueError(f"STUDIO_STORAGE_URL must be empty or s3://bucket/prefix, not {self.storage_url!r}")
        return self

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'studio.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        return self

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def cache_path(self) -> Path:
        """Where this process keeps local copies of stored objects (and, with S3 storage, its work folders)."""
        return Path(self.cache_dir).expanduser().resolve() if self.cache_dir else self.data_dir / "cache"

    def path(self, *parts: str) -> Path:
        """A directory under data_dir, created on first use."""
        p = self.data_dir.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p


@lru_cache(maxsize=8)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


class _SettingsOfTheEnvironment:
    """`get_settings()`: the settings, read once per distinct STUDIO_* environment. Keyed by that environment,
    a copy read while the environment was another (a thread that read it as it changed, then cached it) can never
    be handed out for this one."""

    def __call__(self) -> Settings:
        return _settings_for(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("STUDIO_"))))

    def cache_clear(self) -> None:
        _settings_for.cache_clear()


get_settings = _SettingsOfTheEnvironment()
