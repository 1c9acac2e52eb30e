"""Every ORM table, imported here so Alembic and the app see one metadata."""

# Registers the session hook that keeps metric rollups with every JobMetric row written.
from backend.db import metric_rollup
from backend.db.base import Base, get_engine, session_factory, session_scope, utcnow
from backend.db.dataset import Dataset, DatasetAnalysis, Upload
from backend.db.export import Export
from backend.db.generation import Generation
from backend.db.job import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Artifact,
    Job,
    JobEvent,
    JobMetric,
    JobMetricRollup,
    JobSample,
)
from backend.db.model import Model
from backend.db.security import LoginThrottle, SecurityEvent
from backend.db.token import Token
from backend.db.user import User
from backend.db.worker import Worker

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "Artifact",
    "Base",
    "Dataset",
    "DatasetAnalysis",
    "Export",
    "Generation",
    "Job",
    "JobEvent",
    "JobMetric",
    "JobMetricRollup",
    "JobSample",
    "LoginThrottle",
    "Model",
    "SecurityEvent",
    "Token",
    "Upload",
    "User",
    "Worker",
    "get_engine",
    "metric_rollup",
    "session_factory",
    "session_scope",
    "utcnow",
]
