"""Rollups of jobs' metric points: per series and bucket of steps, the first, lowest, highest and last point.

A chart of a long run reads at most MAX_BUCKETS buckets per series from the level whose buckets fit the run's
step span, and draws the lowest and highest point of each (plus the series' first and last): a loss spike stays
visible however far the curve is thinned. Level k buckets 4**k steps. Spans a few thousand steps long are read
from the points themselves; levels from MIN_LEVEL up are stored in job_metric_rollups, each from the moment the
job's steps reach where a read may need it (built then from the level below), and every point flushed after that
goes into each stored level in the same transaction: a session hook, so every writer of JobMetric rows keeps them.
"""

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Table, case, delete, event, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, UOWTransaction

from backend.db.job import JobMetric, JobMetricRollup

BASE = 4
MIN_LEVEL = 2  # finer levels (1 and 4 steps) are read from the points: at most ~4,000 rows
MAX_LEVEL = 12  # 16.7M steps a bucket: beyond any run
MAX_BUCKETS = 999  # two points a bucket plus the first and last: at most 2,000 points per series
# A span read from the points comes back as stored while it has at most this many of them.
MAX_POINTS = 2000

ROLLUP = cast(Table, JobMetricRollup.__table__)
KINDS = ("first", "min", "max", "last")


class Point(NamedTuple):
    value: float
    id: int
    step: int
    at: float  # UTC epoch seconds


class Summary(NamedTuple):
    n: int  # points in the bucket
    first: Point
    low: Point
    high: Point
    last: Point


class ChartPoint(NamedTuple):
    """A stored point with the values of the series it stands for in a downsampled chart (all of them when the
    chart is not thinned); shaped like a JobMetric for its readers."""

    id: int
    step: int
    created_at: datetime
    values: dict[str, float]


Key = tuple[int, str]  # (bucket, series)


def width(level: int) -> int:
    return int(BASE**level)


def level_for(lo: int, hi: int) -> int:
    """The finest level whose buckets cover steps `lo`..`hi` in at most MAX_BUCKETS."""
    level = 0
    while level < MAX_LEVEL and hi // width(level) - lo // width(level) + 1 > MAX_BUCKETS:
        level += 1
    return level


def _number(value: Any) -> float | None:
    # NaN and infinities have no order, and booleans are not measurements.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _epoch(at: datetime | None) -> float:
    at = at or datetime.now(UTC)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def summarise(rows: Iterable[tuple[int, int, datetime | None, dict[str, Any]]], level: int) -> dict[Key, Summary]:
    """Buckets of `level` over points (id, step, created_at, values) given in id order."""
    size = width(level)
    out: dict[Key, Summary] = {}
    for point_id, step, created_at, values in rows:
        at = _epoch(created_at)
        for name, raw in (values or {}).items():
            value = _number(raw)
            if value is None:
                continue
            p = Point(value, point_id, step, at)
            key = (step // size, name)
            s = out.get(key)
            if s is None:
                out[key] = Summary(1, p, p, p, p)
            else:
                low = p if value < s.low.value else s.low
                high = p if value > s.high.value else s.high
                out[key] = Summary(s.n + 1, s.first, low, high, p)
    return out


def _merge(a: Summary, b: Summary) -> Summary:
    """Two summaries of one series as one; ties keep `a`'s point, as the upsert keeps the stored one."""
    return Summary(
        a.n + b.n,
        b.first if b.first.id < a.first.id else a.first,
        b.low if b.low.value < a.low.value else a.low,
        b.high if b.high.value > a.high.value else a.high,
        b.last if b.last.id > a.last.id else a.last,
    )


def coarsen(summaries: dict[Key, Summary]) -> dict[Key, Summary]:
    """The next level up: BASE buckets of this one make one."""
    out: dict[Key, Summary] = {}
    for (bucket, name), s in sorted(summaries.items()):
        key = (bucket // BASE, name)
        out[key] = _merge(out[key], s) if key in out else s
    return out


def _row(job_id: int, level: int, key: Key, s: Summary) -> dict[str, Any]:
    row: dict[str, Any] = {"job_id": job_id, "level": level, "bucket": key[0], "key": key[1], "count": s.n}
    for kind, p in zip(KINDS, (s.first, s.low, s.high, s.last), strict=True):
        row.update({f"{kind}_value": p.value, f"{kind}_id": p.id, f"{kind}_step": p.step, f"{kind}_at": p.at})
    return row


def _pick(kind: str, cond: Any, ex: Any) -> dict[str, Any]:
    """SET clauses taking the incoming point (`ex`) for `kind` where `cond` holds (SET reads the row as it was)."""
    c = ROLLUP.c
    names = [f"{kind}_{f}" for f in ("value", "id", "step", "at")]
    return {n: case((cond, ex[n]), else_=c[n]) for n in names}


_UPSERTS: dict[str, Any] = {}


def _upsert_statement(dialect_name: str) -> Any:
    """The merging upsert for one dialect, built once: constructing it costs more than running it."""
    if dialect_name not in _UPSERTS:
        stmt = {"sqlite": sqlite, "postgresql": postgresql}[dialect_name].insert(ROLLUP)
        c, ex = ROLLUP.c, stmt.excluded
        set_ = {
            "count": c.count + ex.count,
            **_pick("first", ex.first_id < c.first_id, ex),
            **_pick("min", ex.min_value < c.min_value, ex),
            **_pick("max", ex.max_value > c.max_value, ex),
            **_pick("last", ex.last_id > c.last_id, ex),
        }
        keys = ["job_id", "level", "bucket", "key"]
        _UPSERTS[dialect_name] = stmt.on_conflict_do_update(index_elements=keys, set_=set_)
    return _UPSERTS[dialect_name]


def _upsert(conn: Connection, job_id: int, level: int, summaries: dict[Key, Summary]) -> None:
    """Merge `summaries` into the stored buckets of `level` (one statement; buckets new to it are inserted)."""
    if summaries:
        rows = [_row(job_id, level, k, s) for k, s in summaries.items()]
        conn.execute(_upsert_statement(conn.dialect.name), rows)


def _upsert_levels(conn: Connection, job_id: int, levels: dict[int, dict[Key, Summary]]) -> None:
    """`_upsert` of several levels in one statement."""
    rows = [_row(job_id, level, k, s) for level, summaries in levels.items() for k, s in summaries.items()]
    if rows:
        conn.execute(_upsert_statement(conn.dialect.name), rows)


def _stored(conn: Connection, job_id: int, level: int, buckets: tuple[int, int] | None = None) -> dict[Key, Summary]:
    """The stored buckets of `level` (those in the closed range `buckets` only, if given)."""
    c = ROLLUP.c
    q = select(ROLLUP).where(c.job_id == job_id, c.level == level)
    if buckets is not None:
        q = q.where(c.bucket.between(*buckets))
    out: dict[Key, Summary] = {}
    for r in conn.execute(q.order_by(c.bucket)).mappings():
        points = [Point(r[f"{k}_value"], r[f"{k}_id"], r[f"{k}_step"], r[f"{k}_at"]) for k in KINDS]
        out[(r["bucket"], r["key"])] = Summary(r["count"], *points)
    return out


def _top_stored(conn: Connection, job_id: int) -> int | None:
    return conn.scalar(select(func.max(ROLLUP.c.level)).where(ROLLUP.c.job_id == job_id))


def _points(conn: Connection, job_id: int, from_step: int = 0) -> Iterable[tuple[int, int, datetime, dict[str, Any]]]:
    m = JobMetric.__table__.c
    q = select(m.id, m.step, m.created_at, m["values"]).where(m.job_id == job_id, m.step >= from_step)
    return conn.execute(q.order_by(m.id).execution_options(yield_per=10_000))  # type: ignore[return-value]


def add_points(conn: Connection, job_id: int, rows: Sequence[tuple[int, int, datetime | None, dict[str, Any]]]) -> None:
    """Fold points just written (already in job_metrics, in id order) into the job's stored levels, and store the
    levels their steps make a read need from now on."""
    top = level_for(0, max(r[1] for r in rows))
    stored = _top_stored(conn, job_id)
    if top < MIN_LEVEL and stored is None:
        return
    summaries = summarise(rows, MIN_LEVEL)
    levels: dict[int, dict[Key, Summary]] = {}
    for level in range(MIN_LEVEL, (stored or MIN_LEVEL - 1) + 1):
        levels[level] = summaries
        summaries = coarsen(summaries)
    _upsert_levels(conn, job_id, levels)
    # A level new to the job starts from the one below (the points themselves for the first), which holds the
    # new points already.
    for level in range((stored or MIN_LEVEL - 1) + 1, top + 1):
        below = summarise(_points(conn, job_id), MIN_LEVEL) if level == MIN_LEVEL else _stored(conn, job_id, level - 1)
        _upsert(conn, job_id, level, below if level == MIN_LEVEL else coarsen(below))


def rebuild(conn: Connection, job_id: int) -> None:
    """Build the job's stored levels again from its points in one pass (points bulk-inserted without the session
    hook, or stored before the rollups existed)."""
    conn.execute(delete(ROLLUP).where(ROLLUP.c.job_id == job_id))
    hi = conn.scalar(select(func.max(JobMetric.step)).where(JobMetric.job_id == job_id))
    if hi is None or level_for(0, hi) < MIN_LEVEL:
        return
    summaries = summarise(_points(conn, job_id), MIN_LEVEL)
    for level in range(MIN_LEVEL, level_for(0, hi) + 1):
        _upsert(conn, job_id, level, summaries)
        summaries = coarsen(summaries)


def truncate_after(conn: Connection, job_id: int, step: int) -> None:
    """The job's points after `step` were deleted (a resume from an older checkpoint): drop the buckets past it
    and summarise again the bucket at it, level by level, each from the one below."""
    top = _top_stored(conn, job_id)
    for level in range(MIN_LEVEL, (top or 0) + 1):
        bucket = step // width(level)
        c = ROLLUP.c
        conn.execute(delete(ROLLUP).where(c.job_id == job_id, c.level == level, c.bucket >= bucket))
        if level == MIN_LEVEL:
            partial = summarise(_points(conn, job_id, from_step=bucket * width(level)), level)
        else:
            partial = coarsen(_stored(conn, job_id, level - 1, (bucket * BASE, bucket * BASE + BASE - 1)))
        _upsert(conn, job_id, level, partial)


Picked = dict[int, tuple[int, float, dict[str, float]]]  # point id -> (step, at, the values it stands for)


def _by_step(picked: Picked) -> list[ChartPoint]:
    """The picked points as a chart reads them: by step, then id."""
    return [
        ChartPoint(i, step, datetime.fromtimestamp(at, UTC), values)
        for i, (step, at, values) in sorted(picked.items(), key=lambda item: (item[1][0], item[0]))
    ]


def _chart(summaries: dict[Key, Summary]) -> list[ChartPoint]:
    """The lowest and highest point of every bucket, and each series' first and last, merged by point."""
    ends: dict[str, tuple[int, int]] = {}
    for bucket, name in summaries:
        lo, hi = ends.get(name, (bucket, bucket))
        ends[name] = (min(lo, bucket), max(hi, bucket))
    picked: Picked = {}
    for (bucket, name), s in summaries.items():
        points = [s.low, s.high]
        points += [s.first] if bucket == ends[name][0] else []
        points += [s.last] if bucket == ends[name][1] else []
        for p in points:
            picked.setdefault(p.id, (p.step, p.at, {}))[2][name] = p.value
    return _by_step(picked)


def _stored_chart(conn: Connection, job_id: int, level: int) -> list[ChartPoint]:
    """`_chart` of a stored level, straight from its rows: the read a dashboard waits on, kept lean (the lowest and
    highest of every bucket in one query, the first and last of each series' end buckets in a second)."""
    c = ROLLUP.c
    fields = ("value", "id", "step", "at")
    extremes = [c.bucket, c.key, *(c[f"{k}_{f}"] for k in ("min", "max") for f in fields)]
    of_level = (c.job_id == job_id, c.level == level)
    rows = conn.execute(select(*extremes).where(*of_level).order_by(c.bucket)).all()
    picked: Picked = {}
    ends: dict[str, list[int]] = {}
    # Inlined: this loop runs ~10,000 times for a long run, and a function call per point would double its cost.
    for r in rows:
        name = r[1]
        ends.setdefault(name, [r[0], r[0]])[1] = r[0]  # in bucket order: the first bucket, then the latest
        for o in (2, 6):
            entry = picked.get(r[o + 1])
            if entry is None:
                picked[r[o + 1]] = entry = (r[o + 2], r[o + 3], {})
            entry[2][name] = r[o]
    if ends:
        pairs = [(bucket, name) for name, buckets in ends.items() for bucket in buckets]
        first_last = [c.bucket, c.key, *(c[f"{k}_{f}"] for k in ("first", "last") for f in fields)]
        q = select(*first_last).where(*of_level, tuple_(c.bucket, c.key).in_(pairs))
        for r in conn.execute(q):
            for o, end in ((2, 0), (6, 1)):
                if r[0] == ends[r[1]][end]:
                    entry = picked.get(r[o + 1])
                    if entry is None:
                        picked[r[o + 1]] = entry = (r[o + 2], r[o + 3], {})
                    entry[2][r[1]] = r[o]
    return _by_step(picked)


def chart_points(session: Session, job_id: int) -> list[ChartPoint]:
    """The job's points for a chart, oldest step first: as stored while the run spans few steps, else at most
    2,000 per series with every bucket's extremes."""
    conn = session.connection()
    m = JobMetric.__table__.c
    # Two lookups on (job_id, step): one query asking both would read every row on some backends.
    lo = conn.scalar(select(func.min(m.step)).where(m.job_id == job_id))
    hi = conn.scalar(select(func.max(m.step)).where(m.job_id == job_id))
    if lo is None or hi is None:
        return []
    level = level_for(lo, hi)
    if level < MIN_LEVEL:
        rows = list(_points(conn, job_id))
        if len(rows) <= MAX_POINTS:
            return [ChartPoint(*r) for r in rows]
        return _chart(summarise(rows, level))
    if (_top_stored(conn, job_id) or 0) < level:
        rebuild(conn, job_id)  # points written without the session hook: summarised once, here
    return _stored_chart(conn, job_id, level)


@event.listens_for(Session, "after_flush")
def _fold_new_points(session: Session, _flush: UOWTransaction) -> None:
    """Every JobMetric row the session just inserted goes into its job's rollups, in the same transaction."""
    new: dict[int, list[tuple[int, int, datetime | None, dict[str, Any]]]] = {}
    for obj in session.new:
        if isinstance(obj, JobMetric):
            new.setdefault(obj.job_id, []).append((obj.id, obj.step, obj.created_at, obj.values))
    for job_id, rows in new.items():
        add_points(session.connection(), job_id, sorted(rows))
