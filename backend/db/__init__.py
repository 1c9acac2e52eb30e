"""Every ORM table, imported here so Alembic and the app see one metadata."""

from backend.db.base import Base, get_engine, session_factory, session_scope, utcnow
from backend.db.dataset import Dataset, DatasetAnalysis, Upload
from backend.db.job import ACTIVE_STATUSES, FINAL_STATUSES, Artifact, Job, JobEvent, JobMetric
from backend.db.model import Model
from backend.db.token import Token
from backend.db.user import User

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "Artifact",
    "Base",
    "Dataset",
    "DatasetAnalysis",
    "Job",
    "JobEvent",
    "JobMetric",
    "Model",
    "Token",
    "Upload",
    "User",
    "get_engine",
    "session_factory",
    "session_scope",
    "utcnow",
]
