"""OpenAI-style ids for the studio's rows, and back.

file-<dataset id>                      a dataset (an uploaded file)
file-results-<job id>                  a job's step metrics as CSV (its `result_files`)
ftjob-<job id>                         a job
ftevent-<event id> / ftevent-m<point id>  a log line / a logged point of a job
studio-model-<model id>                a base model
ft:<base>:<suffix>:ftjob-<job id>      a job's fine-tuned model (`:ckpt-step-<step>` after it: a checkpoint)
"""

import re
from dataclasses import dataclass

from backend.openai_compat.errors import ApiError

FILE = re.compile(r"^file-(\d{1,12})$")
RESULTS = re.compile(r"^file-results-(\d{1,12})$")
JOB = re.compile(r"^ftjob-(\d{1,12})$")
EVENT = re.compile(r"^ftevent-(m?)(\d{1,12})$")
MODEL = re.compile(r"^studio-model-(\d{1,12})$")
FINE_TUNED = re.compile(r"^ft:([^:]+):([^:]*):ftjob-(\d{1,12})(?::ckpt-step-(\d{1,12}))?$")


def file_id(dataset_id: int) -> str:
    return f"file-{dataset_id}"


def results_id(job_id: int) -> str:
    return f"file-results-{job_id}"


def job_id(job: int) -> str:
    return f"ftjob-{job}"


def model_id(model: int) -> str:
    return f"studio-model-{model}"


def fine_tuned_id(base: str, suffix: str, job: int, step: int | None = None) -> str:
    name = f"ft:{base}:{suffix}:{job_id(job)}"
    return f"{name}:ckpt-step-{step}" if step is not None else name


def _number(pattern: re.Pattern[str], value: str, what: str, param: str | None, status: int) -> int:
    found = pattern.match(value)
    if found is None:
        raise ApiError(f"No such {what}: {value!r}", status=status, param=param)
    return int(found.group(1))


def parse_job(value: str, *, param: str | None = None, status: int = 404) -> int:
    return _number(JOB, value, "fine-tuning job", param, status)


@dataclass(frozen=True)
class FileRef:
    dataset_id: int | None = None  # an uploaded file
    results_of: int | None = None  # a job's results CSV


def parse_file(value: str, *, param: str | None = None, status: int = 404) -> FileRef:
    if found := RESULTS.match(value):
        return FileRef(results_of=int(found.group(1)))
    return FileRef(dataset_id=_number(FILE, value, "File", param, status))


def parse_event(value: str, *, param: str = "after") -> tuple[str, int]:
    """("metric" | "message", row id) of an event id."""
    found = EVENT.match(value)
    if found is None:
        raise ApiError(f"{value!r} is not an event id of this job", status=400, param=param)
    return ("metric" if found.group(1) else "message"), int(found.group(2))


@dataclass(frozen=True)
class ModelRef:
    base_id: int | None = None  # studio-model-<id>
    job_id: int | None = None  # ft:...:ftjob-<id>
    step: int | None = None  # ...:ckpt-step-<step>
    name: str | None = None  # anything else: a model's name, looked up


def parse_model(value: str) -> ModelRef:
    if found := MODEL.match(value):
        return ModelRef(base_id=int(found.group(1)))
    if found := FINE_TUNED.match(value):
        step = found.group(4)
        return ModelRef(job_id=int(found.group(3)), step=int(step) if step is not None else None)
    return ModelRef(name=value)
