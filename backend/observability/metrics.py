"""The API's Prometheus metrics.

What the database knows (jobs by status, run times, failures, tokens/s of running jobs) is read from it at scrape
time by `StudioCollector`, so every API process reports the same truth and a restart loses nothing. The broker's
queue depths are read from the broker at scrape time too. Only what happens inside this process and is recorded
nowhere else is counted here: lease expiries found by this process's reaper (sum them over API processes).
"""

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from kombu.exceptions import ChannelError
from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, Float, and_, case, func, select
from sqlalchemy.orm import Session

from backend.db import DatasetAnalysis, Export, Job, JobMetric, Worker, session_scope
from backend.queue import ANALYSIS_QUEUE, QUEUE, celery_app, worker_queue
from backend.work.kinds import KINDS

log = logging.getLogger(__name__)

JOB_STATUSES = ("queued", "running", "paused", "succeeded", "failed", "cancelled")
# A training run lasts minutes to days; an export or an analysis seconds to an hour.
JOB_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 259200.0)
SHORT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# The newest points of a running job searched for its tokens/s (evaluation points carry none).
TOKENS_LOOKBACK = 20

LEASE_EXPIRIES = Counter(
    "studio_lease_expiries",
    "Background work whose lease expired (its worker lost), found by this API process's reaper, by kind and what "
    "it became (requeued, or ended once its attempts ran out).",
    ["kind", "outcome"],
    registry=None,
)


def count_expiries(requeued: dict[str, list[int]], ended: dict[str, list[int]]) -> None:
    """Count one reaper sweep's expired leases (backend.work.reaper.Swept's requeued and ended)."""
    for outcome, by_kind in (("requeued", requeued), ("ended", ended)):
        for kind, ids in by_kind.items():
            if ids:
                LEASE_EXPIRIES.labels(kind=kind, outcome=outcome).inc(len(ids))


def seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    """`end - start` in seconds, in SQL (PostgreSQL intervals; SQLite stores the times as text)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start).cast(Float)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def histogram(
    session: Session,
    family: HistogramMetricFamily,
    label: Any,
    seconds: ColumnElement[float],
    where: ColumnElement[bool],
    buckets: Sequence[float],
) -> HistogramMetricFamily:
    """Fill `family` with one histogram per value of `label`, the buckets counted by the database in one query."""
    cumulative = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in buckets]
    rows = session.execute(select(label, func.count(), func.sum(seconds), *cumulative).where(where).group_by(label))
    for value, count, total, *counts in rows:
        family.add_metric(
            [str(value)],
            [(floatToGoString(b), int(c or 0)) for b, c in zip(buckets, counts, strict=True)] + [("+Inf", int(count))],
            sum_value=float(total or 0.0),
        )
    return family


def jobs_by_status(session: Session) -> GaugeMetricFamily:
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
    family = GaugeMetricFamily("studio_jobs", "Training jobs by status.", labels=["status"])
    for status in sorted(set(JOB_STATUSES) | set(counts)):
        family.add_metric([status], counts.get(status, 0))
    return family


def failures(session: Session) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "studio_failures", "Background work that ended failed, by kind (job, export, analysis, ...).", labels=["kind"]
    )
    for kind in KINDS:
        family.add_metric([kind.name], session.scalar(select(func.count()).where(kind.status == kind.failed)) or 0)
    return family


def job_durations(session: Session) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "studio_job_duration_seconds",
        "Run time of ended jobs, from their last start (a resume restarts it) to their end, by final status.",
        labels=["status"],
    )
    ended = and_(Job.started_at.is_not(None), Job.finished_at.is_not(None), Job.status.not_in(("queued", "running")))
    return histogram(
        session, family, Job.status, seconds_between(session, Job.started_at, Job.finished_at), ended, JOB_BUCKETS
    )


def export_durations(session: Session) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "studio_export_duration_seconds", "Time a worker took to build a weights export, by format.", labels=["format"]
    )
    ended = and_(Export.started_at.is_not(None), Export.finished_at.is_not(None), Export.status == "done")
    seconds = seconds_between(session, Export.started_at, Export.finished_at)
    return histogram(session, family, Export.format, seconds, ended, SHORT_BUCKETS)


def analysis_durations(session: Session) -> HistogramMetricFamily:
    # An analysis row records no start of its own: this is request to result (queue wait included), what the
    # person waiting for it sees. The analysis worker's studio_worker_task_seconds has the run time alone.
    family = HistogramMetricFamily(
        "studio_analysis_duration_seconds",
        "Time from requesting a dataset analysis to its result (queue wait included), by analysis kind.",
        labels=["kind"],
    )
    ended = and_(DatasetAnalysis.finished_at.is_not(None), DatasetAnalysis.status == "done")
    seconds = seconds_between(session, DatasetAnalysis.created_at, DatasetAnalysis.finished_at)
    return histogram(session, family, DatasetAnalysis.kind, seconds, ended, SHORT_BUCKETS)


def latest_tokens_per_second(session: Session, job_id: int) -> float | None:
    """The newest tokens/s a job's training points report (None before its first)."""
    rows = session.scalars(
        select(JobMetric.values)
        .where(JobMetric.job_id == job_id)
        .order_by(JobMetric.step.desc(), JobMetric.id.desc())
        .limit(TOKENS_LOOKBACK)
    )
    for values in rows:
        value = values.get("tokens_per_second")
        if isinstance(value, int | float):
            return float(value)
    return None


def tokens_per_second(session: Session) -> Iterator[GaugeMetricFamily]:
    per_job = GaugeMetricFamily(
        "studio_job_tokens_per_second", "Latest training throughput of each running job.", labels=["job_id"]
    )
    total = 0.0
    for job_id in session.scalars(select(Job.id).where(Job.status == "running").order_by(Job.id)):
        value = latest_tokens_per_second(session, job_id)
        if value is not None:
            per_job.add_metric([str(job_id)], value)
            total += value
    yield per_job
    yield GaugeMetricFamily("studio_tokens_per_second", "Training throughput of all running jobs together.", total)


def worker_queues() -> list[str]:
    """The own queue of each registered training worker (placement sends jobs there); none when the database
    cannot be read (its own `studio_up` says so)."""
    try:
        with session_scope() as s:
            return [worker_queue(name) for name in s.scalars(select(Worker.name).where(Worker.queue == QUEUE))]
    except Exception:
        return []


def queue_depths() -> dict[str, int]:
    """Messages waiting in each broker queue (Redis lists in server mode, kombu's SQLite tables when embedded):
    the shared ones and each training worker's own."""
    depths: dict[str, int] = {}
    queues = [QUEUE, ANALYSIS_QUEUE, *worker_queues()]
    with celery_app().connection_for_read() as conn:
        conn.ensure_connection(max_retries=0)  # a broker that is down fails this scrape's depths after one try
        channel = conn.channel()
        try:
            for queue in queues:
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except ChannelError:  # Redis drops an emptied queue's key: nothing waits
                    depths[queue] = 0
        finally:
            channel.close()
    return depths


def from_database() -> list[Metric]:
    with session_scope() as s:
        return [
            jobs_by_status(s),
            failures(s),
            job_durations(s),
            export_durations(s),
            analysis_durations(s),
            *tokens_per_second(s),
        ]


class StudioCollector(Collector):
    """Reads the studio's state from the database and the broker at each scrape. A source that cannot be read
    leaves its families out and says so in `studio_up`, so the other source's metrics still arrive."""

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("studio_up", "Whether the source could be read for this scrape.", labels=["source"])
        try:
            yield from from_database()
            up.add_metric(["database"], 1)
        except Exception as exc:
            log.warning("metrics: the database could not be read: %s", exc)
            up.add_metric(["database"], 0)
        try:
            depths = queue_depths()
            queues = GaugeMetricFamily("studio_queue_depth", "Messages waiting in each broker queue.", labels=["queue"])
            for queue, depth in depths.items():
                queues.add_metric([queue], depth)
            yield queues
            up.add_metric(["broker"], 1)
        except Exception as exc:
            log.warning("metrics: the broker could not be read: %s", exc)
            up.add_metric(["broker"], 0)
        yield up


def api_registry() -> CollectorRegistry:
    """The API's metrics: the studio's state, this process's counters, and the process itself (CPU, memory)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StudioCollector())
    registry.register(LEASE_EXPIRIES)
    ProcessCollector(registry=registry)
    return registry
