"""The analysis task: claim the row, compute statistics, a render or hygiene, store the result or the error.

It runs on its own queue (`studio worker --analysis`), so a dry run answers in a second even while a
training job holds the training worker for hours. Progress (phase, records done of total) goes to the row a
few times a second, and every write publishes, so the dataset page follows it live.
"""

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import shared_task
from transformers import PreTrainedTokenizerBase

from backend.dataset.analysis import HYGIENE, RENDER, STATS, claim_analysis, finish_analysis
from backend.db import Dataset, DatasetAnalysis, Model, session_scope
from backend.queue import ANALYZE_DATASET
from backend.storage import get_cache
from backend.work.heartbeat import heartbeat
from backend.work.kinds import ANALYSIS
from backend.work.lease import LeaseLost
from workers.analysis.hygiene import add_previews, find_issues
from workers.analysis.progress import ProgressFn, Reporter, no_progress
from workers.analysis.tokens import render_one, token_stats
from workers.claims import take
from workers.context import DatasetRef
from workers.examples import load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisContext:
    """What one analysis needs, read from the database into plain values."""

    analysis_id: int
    kind: str
    params: dict[str, Any]
    dataset: DatasetRef
    base_model_key: str | None
    validation_dataset: DatasetRef | None
    record_count: int = 0
    validation_record_count: int = 0

    @property
    def base_model_path(self) -> Path | None:
        """The base model's folder on this machine (a cached copy with remote storage)."""
        return get_cache().tree(self.base_model_key) if self.base_model_key else None

    def totals(self) -> dict[str, int | None]:
        """Records each phase of the computation goes through (what a progress bar counts to)."""
        n = self.record_count
        return {"loading": None, "tokenizing": n, "hashing": n, "comparing": self.validation_record_count}


def load_analysis(analysis_id: int) -> AnalysisContext:
    """Snapshot the analysis, its dataset, and the base model or validation dataset its parameters name."""
    with session_scope() as s:
        row = s.get(DatasetAnalysis, analysis_id)
        if row is None:
            raise LookupError(f"analysis {analysis_id} does not exist")
        dataset = s.get(Dataset, row.dataset_id)
        assert dataset is not None  # the analysis is deleted with its dataset
        params = dict(row.params)
        model = s.get(Model, params["base_model"]) if "base_model" in params else None
        if "base_model" in params and model is None:
            raise LookupError(f"base model {params['base_model']} does not exist")
        other_id = params.get("validation_dataset_id")
        other = s.get(Dataset, other_id) if other_id is not None else None
        if other_id is not None and other is None:
            raise LookupError(f"validation dataset {other_id} does not exist")
        return AnalysisContext(
            analysis_id=row.id,
            kind=row.kind,
            params=params,
            dataset=DatasetRef.of(dataset),
            base_model_key=model.path if model else None,
            validation_dataset=DatasetRef.of(other) if other else None,
            record_count=dataset.record_count,
            validation_record_count=other.record_count if other else 0,
        )


@functools.lru_cache(maxsize=4)
def cached_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Tokenizers of large models take a second to load; a browsing user asks for many renders in a row."""
    return load_tokenizer(Path(path))


def compute(ctx: AnalysisContext, progress: ProgressFn = no_progress) -> dict[str, Any]:
    """The result of the analysis `ctx` describes; `progress` hears each record of each phase."""
    p = ctx.params
    if ctx.kind == HYGIENE:
        validation = ctx.validation_dataset.records() if ctx.validation_dataset else None
        result = find_issues(ctx.dataset.records(), threshold=p["threshold"], validation=validation, progress=progress)
        add_previews(result, ctx.dataset.records())
        result["validation_dataset_id"] = p.get("validation_dataset_id")
        return result
    assert ctx.base_model_path is not None
    progress("loading", 0)  # a large model's tokenizer takes a moment; say what the wait is
    tokenizer = cached_tokenizer(str(ctx.base_model_path))
    common = {"objective": p["objective"], "max_length": p["max_length"]}
    if ctx.kind == STATS:
        result = token_stats(tokenizer, ctx.dataset.records(), batch_size=p["batch_size"], progress=progress, **common)
    elif ctx.kind == RENDER:
        result = render_one(tokenizer, ctx.dataset.records(), index=p["index"], **common)
    else:
        raise ValueError(f"unknown analysis kind {ctx.kind!r}")
    return {**result, "base_model": p["base_model"]}


@shared_task(name=ANALYZE_DATASET)
def analyze_dataset(analysis_id: int) -> str:
    """Compute analysis `analysis_id`; return "done", "failed", "skipped" (another delivery owns it) or "lost"
    (another attempt took it over)."""
    won = take(ANALYSIS, analysis_id, claim_analysis)
    if won is None:
        return "skipped"
    with heartbeat(won):
        try:
            ctx = load_analysis(analysis_id)
            result = compute(ctx, Reporter(analysis_id, ctx.totals()))
            finish_analysis(analysis_id, result=result)
        except LeaseLost as exc:
            log.warning("%s", exc)
            return "lost"
        except Exception as exc:
            log.exception("analysis %s failed", analysis_id)
            with contextlib.suppress(LeaseLost):
                finish_analysis(analysis_id, error=f"{type(exc).__name__}: {exc}")
            return "failed"
    return "done"
