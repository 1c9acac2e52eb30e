"""A job's logged points in OpenAI's names: its results CSV and the `data` of its metrics events."""

import csv
import io
from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, or_, select

from backend.db import JobMetric, session_scope

# OpenAI's step_metrics.csv columns, and the studio's series each is read from (training and evaluation points
# are logged separately at the same step; a row joins them).
COLUMNS = {
    "train_loss": "loss",
    "train_accuracy": "token_accuracy",
    "valid_loss": "eval_loss",
    "valid_mean_token_accuracy": "eval_token_accuracy",
}
PAGE = 10_000


def openai_values(values: dict[str, float]) -> dict[str, float]:
    """A point's values under OpenAI's names (those it has), plus the learning rate and tokens seen."""
    named = {theirs: values[ours] for theirs, ours in COLUMNS.items() if ours in values}
    extra = {key: values[key] for key in ("learning_rate", "tokens_seen") if key in values}
    return named | extra


def _points(job_id: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(step, values) of every point, by step: PAGE at a time by the (job_id, step) index, each page in a short
    session of its own (a long run has millions of points, and the response streams for as long as it takes)."""
    after: tuple[int, int] | None = None
    while True:
        q = select(JobMetric.id, JobMetric.step, JobMetric.values).where(JobMetric.job_id == job_id)
        if after is not None:
            step, point_id = after
            q = q.where(or_(JobMetric.step > step, and_(JobMetric.step == step, JobMetric.id > point_id)))
        with session_scope() as s:
            page = s.execute(q.order_by(JobMetric.step, JobMetric.id).limit(PAGE)).all()
        yield from ((step, values) for _, step, values in page)
        if len(page) < PAGE:
            return
        after = (page[-1].step, page[-1].id)


def results_csv(job_id: int) -> Iterator[bytes]:
    """step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy: one row per logged step, written as
    the points are read."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["step", *COLUMNS], lineterminator="\n")

    def written() -> bytes:
        text = out.getvalue()
        out.seek(0)
        out.truncate()
        return text.encode()

    writer.writeheader()
    yield written()
    row: dict[str, Any] = {}
    for step, values in _points(job_id):
        if row and row["step"] != step:
            writer.writerow(row)
            row = {}
        named = {k: v for k, v in openai_values(values).items() if k in COLUMNS}
        if named:
            row = {**(row or {"step": step}), **named}
        if out.tell() >= 1 << 16:
            yield written()
    if row:
        writer.writerow(row)
    yield written()
