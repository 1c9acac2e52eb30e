"""A job's logged points in OpenAI's names: its results CSV and the `data` of its metrics events."""

import csv
import io
from typing import Any

from sqlalchemy.orm import Session

from backend.job import service as jobs

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


def results_csv(session: Session, job_id: int) -> bytes:
    """step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy: one row per logged step."""
    rows: dict[int, dict[str, Any]] = {}
    after = 0
    while page := jobs.metrics_after(session, job_id, after, PAGE):  # pages: a long run has millions of points
        for point in page:
            named = {k: v for k, v in openai_values(point.values).items() if k in COLUMNS}
            if named:
                rows.setdefault(point.step, {}).update(named)
        after = page[-1].id
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["step", *COLUMNS], lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow({"step": step, **rows[step]})
    return out.getvalue().encode()
