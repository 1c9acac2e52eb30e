"""Long runs on the dashboard: downsampled metric curves that keep every bucket's extremes, full-resolution pages,
rollups kept in step with writes and resumes, and the jobs list in pages without a query per job."""

import contextlib
import math
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, event, insert, select, update

from backend.db import Dataset, Job, JobMetric, User, get_engine, metric_rollup, session_scope, utcnow

# Sparse steps over a wide span: 4,000 points over 160,000 steps read from the level of 256-step buckets.
POINTS, STRIDE, SPIKE_AT = 4000, 40, 2777


def _dataset(owner_id: int) -> int:
    with session_scope() as s:
        ds = Dataset(
            owner_id=owner_id, name="corpus", filename="c.txt", path="/nowhere", size_bytes=1, sha256="0" * 64,
            format="text", shape="text", record_count=1,
        )  # fmt: skip
        s.add(ds)
        s.flush()
        return ds.id


def _jobs(count: int, owner: str = "owner@example.com") -> list[int]:
    with session_scope() as s:
        user = s.scalar(select(User).where(User.email == owner))
        assert user is not None
        dataset_id = _dataset(user.id)
        jobs = [
            Job(owner_id=user.id, name=f"run {i}", kind="pretrain", objective="clm", dataset_id=dataset_id)
            for i in range(count)
        ]
        s.add_all(jobs)
        s.flush()
        return [j.id for j in jobs]


def _values(i: int, rng: random.Random) -> dict[str, float]:
    values = {"loss": 3.0 * math.exp(-i / 1500) + rng.uniform(0, 0.05), "learning_rate": 1e-3 * (1 - i / POINTS)}
    if i == SPIKE_AT:
        values["loss"] = 40.0  # one diverging step among thousands: a chart must still show it
    if i % 100 == 0:
        values["eval_loss"] = 3.0 * math.exp(-i / 1500) + 0.2
    return values


def _write_points(job_id: int, start: int = 0, stop: int = POINTS, flushes: int = 8) -> None:
    """What a worker does, a few hundred points a transaction (each point its own row, through the session)."""
    rng, t0 = random.Random(start), utcnow()
    per = max(1, (stop - start) // flushes)
    for first in range(start, stop, per):
        with session_scope() as s:
            for i in range(first, min(stop, first + per)):
                at = t0 + timedelta(seconds=i)
                s.add(JobMetric(job_id=job_id, step=i * STRIDE, values=_values(i, rng), created_at=at))


def _reference(job_id: int) -> list[tuple[int, int, dict[str, float]]]:
    """The chart computed from every stored point at once, as the API must give it however they were written."""
    with session_scope() as s:
        rows = s.execute(
            select(JobMetric.id, JobMetric.step, JobMetric.created_at, JobMetric.values)
            .where(JobMetric.job_id == job_id)
            .order_by(JobMetric.id)
        ).all()
    steps = [r.step for r in rows]
    level = metric_rollup.level_for(min(steps), max(steps))
    assert level >= metric_rollup.MIN_LEVEL  # the rollup path, not the raw one
    chart = metric_rollup._chart(metric_rollup.summarise([tuple(r) for r in rows], level))
    return [(p.id, p.step, p.values) for p in chart]


def _chart(client: TestClient, job_id: int) -> list[dict[str, Any]]:
    res = client.get(f"/api/jobs/{job_id}/metrics")
    assert res.status_code == 200, res.text
    points: list[dict[str, Any]] = res.json()
    return points


def _as_tuples(points: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, float]]]:
    return [(p["id"], p["step"], p["values"]) for p in points]


def test_long_run_is_downsampled_keeping_extremes(client: TestClient) -> None:
    (job_id,) = _jobs(1)
    _write_points(job_id)
    points = _chart(client, job_id)
    per_series = {k: sum(k in p["values"] for p in points) for k in ("loss", "learning_rate", "eval_loss")}
    assert 1000 < per_series["loss"] <= 2000 and per_series["learning_rate"] <= 2000
    assert per_series["eval_loss"] == POINTS // 100  # a sparse series keeps every point: one a bucket
    losses = [(p["step"], p["values"]["loss"]) for p in points if "loss" in p["values"]]
    assert (SPIKE_AT * STRIDE, 40.0) in losses  # the spike survives
    assert losses[0][0] == 0 and losses[-1][0] == (POINTS - 1) * STRIDE  # first and last point of the run
    assert [p["step"] for p in points] == sorted(p["step"] for p in points)
    # Written in eight transactions, read from rollups: the same chart as summarising every point at once.
    assert _as_tuples(points) == _reference(job_id)


def test_short_run_comes_back_as_stored(client: TestClient) -> None:
    (job_id,) = _jobs(1)
    with session_scope() as s:
        s.add_all(JobMetric(job_id=job_id, step=i, values={"loss": 1.0 / (i + 1)}) for i in range(50))
    points = _chart(client, job_id)
    assert [p["step"] for p in points] == list(range(50))
    with session_scope() as s:
        assert s.scalar(select(metric_rollup.ROLLUP.c.job_id).where(metric_rollup.ROLLUP.c.job_id == job_id)) is None


def test_resume_drops_buckets_past_the_checkpoint(client: TestClient) -> None:
    (job_id,) = _jobs(1)
    _write_points(job_id)
    keep = 3100 * STRIDE + 7  # mid-bucket at every level
    with session_scope() as s:
        s.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > keep))
        metric_rollup.truncate_after(s.connection(), job_id, keep)
    assert _as_tuples(_chart(client, job_id)) == _reference(job_id)
    # The resumed run writes on from there, into the same buckets.
    _write_points(job_id, start=3101, stop=3900, flushes=3)
    assert _as_tuples(_chart(client, job_id)) == _reference(job_id)


def test_points_written_without_the_session_are_summarised_on_first_read(client: TestClient) -> None:
    (job_id,) = _jobs(1)
    rng, t0 = random.Random(1), utcnow()
    rows = [
        {"job_id": job_id, "step": i * STRIDE, "values": _values(i, rng), "created_at": t0 + timedelta(seconds=i)}
        for i in range(POINTS)
    ]
    with get_engine().begin() as conn:  # a bulk insert bypasses the ORM session and its hook
        conn.execute(insert(JobMetric), rows)
    assert _as_tuples(_chart(client, job_id)) == _reference(job_id)


def test_full_resolution_in_pages(client: TestClient) -> None:
    (job_id,) = _jobs(1)
    _write_points(job_id, stop=250, flushes=1)
    first = client.get(f"/api/jobs/{job_id}/metrics", params={"resolution": "full", "limit": 100})
    assert first.status_code == 200 and len(first.json()) == 100
    ids = [p["id"] for p in first.json()]
    assert f"after={ids[-1]}&limit=100" in first.headers["link"] and 'rel="next"' in first.headers["link"]
    seen = list(ids)
    after = ids[-1]
    while True:
        page = client.get(f"/api/jobs/{job_id}/metrics", params={"resolution": "full", "after": after, "limit": 100})
        seen += [p["id"] for p in page.json()]
        if "link" not in page.headers:
            break
        after = seen[-1]
    assert len(seen) == 250 and seen == sorted(seen)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"resolution": "all"}, "resolution"), ({"resolution": "full", "limit": 0}, "limit"), ({"after": -1}, "after")],
)
def test_bad_metric_queries_name_the_field(client: TestClient, params: dict[str, Any], field: str) -> None:
    (job_id,) = _jobs(1)
    res = client.get(f"/api/jobs/{job_id}/metrics", params=params)
    assert res.status_code == 422 and field in res.text


@contextlib.contextmanager
def _counted_queries() -> Iterator[list[str]]:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(get_engine(), "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(get_engine(), "before_cursor_execute", count)


def test_jobs_list_pages_with_a_cursor_and_no_query_per_job(client: TestClient) -> None:
    ids = _jobs(7)
    first = client.get("/api/jobs", params={"limit": 3}).json()
    assert [j["id"] for j in first["items"]] == ids[::-1][:3] and first["next_cursor"] == ids[4]
    second = client.get("/api/jobs", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in second["items"]] == ids[::-1][3:6]
    last = client.get("/api/jobs", params={"limit": 3, "cursor": second["next_cursor"]}).json()
    assert [j["id"] for j in last["items"]] == ids[:1] and last["next_cursor"] is None
    assert first["items"][0]["dataset_name"] == "corpus"
    assert client.get("/api/jobs", params={"limit": 0}).status_code == 422

    with _counted_queries() as statements:
        client.get("/api/jobs", params={"limit": 2})
        few = len(statements)
        statements.clear()
        client.get("/api/jobs", params={"limit": 7})
        assert len(statements) == few  # the same queries for 2 jobs as for 7


def test_dashboards_on_one_job_share_reads_and_miss_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five SSE followers of a running job, two of them joining late from a cursor of their own: each gets every
    point once and in order, while the feed reads the new rows once per look for all of them."""
    import asyncio

    from backend.events import Broadcaster
    from backend.job import stream

    (job_id,) = _jobs(1)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="running"))
        s.add_all(JobMetric(job_id=job_id, step=i, values={"loss": 1.0}) for i in range(3))
    reads: list[tuple[int, int] | None] = []
    real_read = stream._read

    def counted(job: int, cursor: tuple[int, int] | None) -> stream.Batch:
        reads.append(cursor)
        return real_read(job, cursor)

    monkeypatch.setattr(stream, "_read", counted)
    broadcaster = Broadcaster("")  # no Redis: the feed looks every poll_seconds

    async def follow(after: str, got: list[int]) -> None:
        async for item in stream.job_events(job_id, stream.parse_cursor(after), broadcaster):
            if item["event"] == "metric":
                got.append(int(item["id"].split(":")[0]))

    def write(first: int, last: int) -> None:
        with session_scope() as s:
            s.add_all(JobMetric(job_id=job_id, step=i, values={"loss": 1.0}) for i in range(first, last))

    async def scenario() -> list[list[int]]:
        got: list[list[int]] = [[] for _ in range(5)]
        early = [asyncio.create_task(follow("0:0", got[i])) for i in range(3)]
        await asyncio.sleep(0.7)
        await asyncio.to_thread(write, 3, 10)
        await asyncio.sleep(0.7)
        late = [asyncio.create_task(follow(f"{got[0][4]}:0", got[i])) for i in (3, 4)]
        await asyncio.to_thread(write, 10, 20)
        await asyncio.sleep(1.5)
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
        await asyncio.wait_for(asyncio.gather(*early, *late), 10)
        return got

    got = asyncio.run(scenario())
    with session_scope() as s:
        ids = list(s.scalars(select(JobMetric.id).where(JobMetric.job_id == job_id).order_by(JobMetric.id)))
    assert got[:3] == [ids] * 3
    assert got[3] == got[4] == ids[5:]
    looks = sum(1 for cursor in reads if cursor is not None and cursor != (0, 0))
    # Five listeners polling every 0.5 s for ~4 s would read ~35 times on their own; the feed reads ~8 times,
    # and each late joiner once to replay.
    assert looks < 16
