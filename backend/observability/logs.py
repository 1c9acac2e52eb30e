"""Log lines for people (the default) or for a log pipeline: one JSON object per line with `STUDIO_LOG_FORMAT=json`.

A line about a job carries its `job_id`: given explicitly (`log.info(..., extra={"job_id": 7})`), or taken from
`current_job`, which a worker sets while it runs the job (`job_logging`). A context variable rather than a global,
so a thread or task that is not working on the job never claims it.
"""

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

from backend.config import get_settings

current_job: ContextVar[int | None] = ContextVar("current_job", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def job_logging(job_id: int) -> Iterator[None]:
    """Every line logged in this context (this thread, unless copied) is about job `job_id`."""
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


class JobIdFilter(logging.Filter):
    """Adds `job_id` to a record from the running job, unless the caller named one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, job_id when known, and the
    traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            line["job_id"] = job_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: an `extra` value or a message argument JSON cannot encode must not lose the line.
        return json.dumps(line, ensure_ascii=False, default=str)


def handler(stream: IO[str] | None = None, *, json_lines: bool | None = None) -> logging.Handler:
    """A stream handler (stderr by default) in the configured format, which tags lines with the running job."""
    if json_lines is None:
        json_lines = get_settings().log_format == "json"
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    h.addFilter(JobIdFilter())
    return h


def configure(level: int = logging.INFO) -> None:
    """Route every logger (uvicorn's and Celery's included, once they propagate) to one handler on the root in the
    configured format."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler())
    root.setLevel(level)
