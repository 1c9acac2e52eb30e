"""Dataset analyses: token statistics, dry-run renders and hygiene, computed by the analysis worker.

The web app validates the parameters, stores a `DatasetAnalysis` row (one per dataset version, kind and
parameters, so a result is computed once and then served from the database) and sends its id to the
analysis queue after the commit. The worker (`workers.analysis`) claims the row, computes (writing its
progress a few times a second), and writes the result back; each write publishes `analysis_key`, which the
live stream (`analysis_stream`) follows. "Apply fixes" runs here: it needs no tokenizer, only the hygiene
result and the records.
"""

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.dataset.analysis_schemas import AnalysisRead, FixesRequest
from backend.dataset.formats import read_records
from backend.dataset.service import ingest_file
from backend.db import Dataset, DatasetAnalysis, User, session_scope, utcnow
from backend.errors import Conflict, Invalid, NotFound
from backend.events import publish_analysis
from backend.method import registry
from backend.model.service import visible_model
from backend.storage import scratch_dir
from backend.storage.stored_file import readable
from backend.work import lease
from backend.work.kinds import ANALYSIS
from backend.work.lease import Expired, Lease
from backend.work.send import send

STATS, RENDER, HYGIENE = "stats", "render", "hygiene"
LABELS = {STATS: "statistics", RENDER: "render", HYGIENE: "hygiene check"}
FINISHED = ("done", "failed")
POLL_SECONDS = 0.2
DEFAULT_THRESHOLD = 0.8  # estimated Jaccard similarity of word 3-gram sets above which records are near-duplicates
# What each shape keeps when written back as JSON Lines: the canonical keys, which the readers recognize.
SHAPE_KEYS = {
    "text": ("text",),
    "prompt_completion": ("system", "prompt", "completion"),
    "messages": ("messages", "tools"),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label", "tools"),
    "classification": ("text", "label"),
}
# Hygiene result lists of indices to drop, per fix.
FIXES = {
    "drop_exact_duplicates": ("exact_duplicates", "exact duplicates"),
    "drop_near_duplicates": ("near_duplicates", "near duplicates"),
    "drop_conflicts": ("conflicting_answers", "records with conflicting answers"),
    "drop_leaked": ("leakage", "records leaked into validation"),
}


def params_key(params: dict[str, Any]) -> str:
    """sha256 of the parameters' canonical JSON: the cache key of an analysis."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def token_params(
    session: Session,
    *,
    user: User,
    dataset: Dataset,
    base_model: int,
    objective: str | None,
    max_length: int,
    batch_size: int | None = None,
    index: int | None = None,
) -> dict[str, Any]:
    """Validated parameters of a statistics analysis (with batch_size) or a dry-run render (with index)."""
    visible_model(session, user=user, model_id=base_model, field="base_model")
    objective = objective or registry.default_objective(dataset.shape) or "causal_lm"
    # The same (objective, shape) pairs a job accepts: a dry run of data no job can train on would mislead.
    if objective not in registry.OBJECTIVES:
        raise Invalid(
            f"unknown objective {objective!r}: objectives are {', '.join(registry.OBJECTIVES)}", field="objective"
        )
    shapes = registry.objective(objective).shapes
    if dataset.shape not in shapes:
        raise Invalid(
            f"objective {objective} needs {' or '.join(shapes)} records; dataset {dataset.id} is {dataset.shape}",
            field="objective",
        )
    params: dict[str, Any] = {"base_model": base_model, "objective": objective, "max_length": max_length}
    if batch_size is not None:
        params["batch_size"] = batch_size
    if index is not None:
        if index >= dataset.record_count:
            raise Invalid(
                f"index {index} is out of range: dataset {dataset.id} has records 0 to {dataset.record_count - 1}",
                field="index",
            )
        params["index"] = index
    return params


def hygiene_params(
    session: Session, *, user: User, dataset: Dataset, validation_dataset_id: int | None, threshold: float
) -> dict[str, Any]:
    """Validated parameters of a hygiene analysis."""
    if validation_dataset_id is not None:
        other = session.get(Dataset, validation_dataset_id)
        if other is None or not (other.owner_id == user.id or user.is_admin):
            raise Invalid(f"dataset {validation_dataset_id} not found", field="validation_dataset_id")
        if other.id == dataset.id:
            raise Invalid("a dataset cannot be its own validation set", field="validation_dataset_id")
    return {"validation_dataset_id": validation_dataset_id, "threshold": round(threshold, 4)}


def _find(session: Session, dataset_id: int, kind: str, key: str) -> DatasetAnalysis | None:
    q = select(DatasetAnalysis).where(
        DatasetAnalysis.dataset_id == dataset_id, DatasetAnalysis.kind == kind, DatasetAnalysis.key == key
    )
    return session.scalar(q)


def _get_or_create(
    session: Session, *, dataset: Dataset, kind: str, params: dict[str, Any]
) -> tuple[DatasetAnalysis, bool]:
    key = params_key(params)
    found = _find(session, dataset.id, kind, key)
    if found is not None:
        return found, False
    try:
        # A savepoint: when a concurrent request inserted the same analysis first, only this insert is undone.
        with session.begin_nested():
            row = DatasetAnalysis(dataset_id=dataset.id, kind=kind, key=key, params=params, status="queued")
            session.add(row)
    except IntegrityError:
        found = _find(session, dataset.id, kind, key)
        assert found is not None
        return found, False
    return row, True


def _retry(session: Session, analysis: DatasetAnalysis, refresh: bool) -> bool:
    """With `refresh`, queue a failed analysis again; False otherwise. A failure is kept until asked (computing
    it again would fail again); a lost worker's analysis is queued again by the reaper."""
    if not (refresh and analysis.status == "failed"):
        return False
    lease.requeue(session, ANALYSIS, analysis.id, result=None, error=None, progress=None, finished_at=None)
    session.refresh(analysis)
    return True


def submit(
    session: Session, *, dataset: Dataset, kind: str, params: dict[str, Any], refresh: bool = False
) -> DatasetAnalysis:
    """The analysis of `dataset` for `params`; a new or stale one (or, with `refresh`, a failed one) is sent
    to the analysis worker after the commit."""
    analysis, created = _get_or_create(session, dataset=dataset, kind=kind, params=params)
    if not created and not _retry(session, analysis, refresh):
        return analysis
    session.commit()  # the worker must find the row when the task arrives
    publish_analysis(analysis.id)  # a page following a failed run sees it queued again
    send(ANALYSIS, analysis.id)  # if the broker is down, the row waits queued and the sweep sends it later
    return analysis


def existing(session: Session, *, dataset: Dataset, kind: str, params: dict[str, Any]) -> DatasetAnalysis:
    """The analysis of `dataset` for `params` as it stands; NotFound when nobody asked for it (reading never
    queues work: a GET must stay safe)."""
    found = _find(session, dataset.id, kind, params_key(params))
    if found is None:
        raise NotFound(f"no {LABELS[kind]} for these settings yet: POST to compute them")
    return found


def visible_analysis(session: Session, *, user: User, analysis_id: int) -> DatasetAnalysis:
    """An analysis of a dataset `user` owns (any, for an admin); NotFound otherwise, as for the dataset."""
    analysis = session.get(DatasetAnalysis, analysis_id)
    dataset = session.get(Dataset, analysis.dataset_id) if analysis is not None else None
    if analysis is None or dataset is None or not (dataset.owner_id == user.id or user.is_admin):
        raise NotFound(f"analysis {analysis_id} not found")
    return analysis


def read_state(analysis_id: int) -> AnalysisRead:
    """The analysis as the API returns it (a short session of its own, for polling)."""
    with session_scope() as s:
        analysis = s.get(DatasetAnalysis, analysis_id)
        if analysis is None:
            raise NotFound(f"analysis {analysis_id} not found")
        return AnalysisRead.model_validate(analysis)


async def wait_for(analysis_id: int, seconds: float) -> AnalysisRead:
    """Poll the analysis until it is finished or `seconds` have passed, without blocking the event loop."""
    deadline = anyio.current_time() + seconds
    while True:
        state = await to_thread.run_sync(read_state, analysis_id)
        if state.status in FINISHED or anyio.current_time() >= deadline:
            return state
        await anyio.sleep(POLL_SECONDS)


def claim_analysis(analysis_id: int, worker: str = "worker") -> Lease | None:
    """Atomically move a queued analysis to running for `worker`. None means another delivery got it first."""
    with session_scope() as s:
        won = lease.claim(s, ANALYSIS, analysis_id, worker, progress=None)
    if won is not None:
        publish_analysis(analysis_id)
    return won


def _write(analysis_id: int, status: str | None = None, **values: Any) -> None:
    """Set `values` (and end as `status`) on a running analysis: fenced by the lease this process holds on it."""
    held = lease.held(ANALYSIS, analysis_id)
    with session_scope() as s:
        if held is not None and status is not None:
            lease.finish(s, held, status, **values)
        elif held is not None:
            lease.renew(s, held, **values)
        else:
            end = {"status": status, "lease_worker": None} if status else {}
            s.execute(
                update(DatasetAnalysis)
                .where(DatasetAnalysis.id == analysis_id, DatasetAnalysis.status == "running")
                .values(**values, **end)
                .execution_options(synchronize_session=False)
            )
    publish_analysis(analysis_id)


def record_progress(analysis_id: int, *, phase: str, done: int, total: int | None) -> None:
    """Store where a running analysis is (renewing the lease) and wake its live readers (the worker calls this a
    few times a second at most); LeaseLost once another attempt owns it."""
    _write(analysis_id, progress={"phase": phase, "done": done, "total": total})


def finish_analysis(analysis_id: int, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
    """Store the result (or the error) of a running analysis; LeaseLost if this worker no longer owns it."""
    _write(analysis_id, "failed" if error else "done", result=result, error=error, finished_at=utcnow())


def recover_analysis(session: Session, row: Expired, max_attempts: int) -> bool:
    """The worker of a running analysis was lost: compute it again on a live worker (True), or fail once the
    attempts are spent."""
    if row.spent(max_attempts):
        error = f"the analysis worker ({row.lease_worker}) stopped answering, on {row.last_note(max_attempts)}"
        lease.give_up(session, ANALYSIS, row, error=error, finished_at=utcnow())
        return False
    return lease.take_over(session, ANALYSIS, row, progress=None)


def _hygiene_result(session: Session, *, dataset: Dataset, fixes: FixesRequest) -> DatasetAnalysis:
    q = select(DatasetAnalysis).where(
        DatasetAnalysis.dataset_id == dataset.id, DatasetAnalysis.kind == HYGIENE, DatasetAnalysis.status == "done"
    )
    if fixes.threshold is not None or fixes.validation_dataset_id is not None:
        threshold = fixes.threshold or DEFAULT_THRESHOLD
        wanted = {"validation_dataset_id": fixes.validation_dataset_id, "threshold": round(threshold, 4)}
        q = q.where(DatasetAnalysis.key == params_key(wanted))
    found = session.scalar(q.order_by(DatasetAnalysis.finished_at.desc(), DatasetAnalysis.id.desc()).limit(1))
    if found is None or not found.result:
        raise Conflict(f"dataset {dataset.id} has no finished hygiene check with these settings; run one first")
    return found


def _write_kept(dataset: Dataset, drop: set[int], dest: Path) -> int:
    """Stream the records not in `drop` to `dest` as JSON Lines in their canonical layout; return how many."""
    keys = SHAPE_KEYS.get(dataset.shape, ())
    kept = 0
    with dest.open("w", encoding="utf-8") as out:
        records = read_records(readable(dataset.path), dataset.filename, dataset.options or None)
        for index, record in enumerate(records):
            if index in drop:
                continue
            # Only absent fields are left out: an empty prompt is valid data and must stay in the new version.
            row = {k: record[k] for k in keys if record.get(k) is not None} if keys else record
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            kept += 1
    return kept


def apply_fixes(session: Session, *, user: User, dataset: Dataset, fixes: FixesRequest) -> Dataset:
    """Drop what the chosen fixes name from the latest hygiene result; the rest becomes the next version."""
    chosen = [name for name in FIXES if getattr(fixes, name)]
    if not chosen:
        raise Invalid("choose at least one fix", field="drop_exact_duplicates")
    result = _hygiene_result(session, dataset=dataset, fixes=fixes).result or {}
    drop: set[int] = set()
    notes = []
    for name in chosen:
        key, label = FIXES[name]
        indices = set(result.get("drop", {}).get(key, []))
        drop |= indices
        notes.append(f"dropped {len(indices)} {label}")
    if not drop:
        raise Invalid("the chosen fixes drop no records: the dataset is already clean", field=chosen[0])
    tmp = scratch_dir() / f"{uuid.uuid4().hex}.jsonl"
    try:
        kept = _write_kept(dataset, drop, tmp)
        if kept == 0:
            raise Invalid("the chosen fixes would drop every record", field=chosen[0])
        owner = session.get(User, dataset.owner_id) or user  # a version belongs to the owner of its lineage
        return ingest_file(
            session,
            user=owner,
            path=tmp,
            filename=f"{Path(dataset.filename).stem}.jsonl",
            name=dataset.name,
            options={"shape": dataset.shape},
            parent=dataset,
            note=f"fixes: {', '.join(notes)}; {kept} of {dataset.record_count} records kept",
        )
    finally:
        tmp.unlink(missing_ok=True)
