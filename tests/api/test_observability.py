"""The API's /metrics: who may scrape it, the families it reports (read from the database and the broker at scrape
time), counters that move when a lease expires, and JSON log lines."""

import io
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import select
from starlette.requests import Request

from backend.db import DatasetAnalysis, Export, Job, JobMetric, User, session_scope, utcnow
from backend.observability.logs import handler, job_logging
from backend.observability.router import may_scrape
from backend.queue import ANALYSIS_QUEUE, QUEUE, worker_queue
from backend.work.kinds import JOB
from backend.work.send import send
from tests.api.live_workers import register_worker
from tests.api.test_metrics_scale import _dataset
from tests.support import METRICS_TOKEN, STUDIO, StudioProcess, free_port

TOKEN = "scrape-secret-0123456789"
Scrape = Callable[[], list[Sample]]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called `name` whose labels include `labels`."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


def parse(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


@pytest.fixture
def scrape(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Scrape:
    """Prometheus's view: GET /metrics with the scrape token, parsed."""
    monkeypatch.setenv("STUDIO_METRICS_TOKEN", TOKEN)

    def read() -> list[Sample]:
        res = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert res.status_code == 200, res.text
        assert res.headers["content-type"].startswith("text/plain; version=")
        return parse(res.text)

    return read


def _owner() -> int:
    with session_scope() as s:
        user_id = s.scalar(select(User.id).where(User.email == "owner@example.com"))
        assert user_id is not None
        return user_id


def _job(owner_id: int, dataset_id: int, status: str, *, ran_seconds: float | None = None, **fields: object) -> int:
    """A job row in `status`; one that ran `ran_seconds` started that long before it finished (a minute ago)."""
    finished = utcnow() - timedelta(minutes=1)
    times = (
        {}
        if ran_seconds is None
        else {"started_at": finished - timedelta(seconds=ran_seconds), "finished_at": finished}
    )
    with session_scope() as s:
        job = Job(
            owner_id=owner_id, name=status, kind="pretrain", objective="clm", dataset_id=dataset_id, status=status,
            **times, **fields,
        )  # fmt: skip
        s.add(job)
        s.flush()
        return job.id


def test_scrape_reports_jobs_failures_durations_and_throughput(scrape: Scrape) -> None:
    empty = scrape()
    assert value(empty, "studio_up", source="database") == 1
    assert value(empty, "studio_up", source="broker") == 1
    for status in ("queued", "running", "paused", "succeeded", "failed", "cancelled"):
        assert value(empty, "studio_jobs", status=status) == 0
    assert value(empty, "studio_queue_depth", queue=QUEUE) == 0
    assert value(empty, "studio_queue_depth", queue=ANALYSIS_QUEUE) == 0
    assert value(empty, "studio_tokens_per_second") == 0

    owner = _owner()
    dataset = _dataset(owner)
    for _ in range(2):
        _job(owner, dataset, "queued")
    running = _job(owner, dataset, "running", started_at=utcnow(), current_step=4)
    succeeded = _job(owner, dataset, "succeeded", ran_seconds=90)
    _job(owner, dataset, "failed", ran_seconds=10, error="boom")
    with session_scope() as s:
        # The newest point is an evaluation (no tokens/s): the throughput comes from the training point before it.
        s.add(JobMetric(job_id=running, step=3, values={"loss": 2.0, "tokens_per_second": 1234.5}))
        s.add(JobMetric(job_id=running, step=4, values={"eval_loss": 2.1}))
        done = utcnow()
        began = done - timedelta(seconds=3)
        s.add(
            Export(
                job_id=succeeded, owner_id=owner, format="adapter", status="done", started_at=began, finished_at=done
            )
        )
        s.add(Export(job_id=succeeded, owner_id=owner, format="merged", status="failed", error="no room"))
        asked = done - timedelta(seconds=2)
        s.add(
            DatasetAnalysis(
                dataset_id=dataset, kind="stats", key="k", status="done", created_at=asked, finished_at=done
            )
        )

    now = scrape()
    statuses = ("queued", "running", "succeeded", "failed", "cancelled")
    assert [value(now, "studio_jobs", status=status) for status in statuses] == [2, 1, 1, 1, 0]
    assert value(now, "studio_failures", kind="job") == 1
    assert value(now, "studio_failures", kind="export") == 1
    assert value(now, "studio_failures", kind="analysis") == 0

    ran = "studio_job_duration_seconds"
    assert value(now, f"{ran}_count", status="succeeded") == 1
    assert value(now, f"{ran}_sum", status="succeeded") == pytest.approx(90, abs=1)
    assert value(now, f"{ran}_bucket", status="succeeded", le="60.0") == 0
    assert value(now, f"{ran}_bucket", status="succeeded", le="300.0") == 1
    assert value(now, f"{ran}_bucket", status="failed", le="60.0") == 1

    assert value(now, "studio_export_duration_seconds_count", format="adapter") == 1
    assert value(now, "studio_export_duration_seconds_sum", format="adapter") == pytest.approx(3, abs=0.5)
    assert value(now, "studio_export_duration_seconds_bucket", format="adapter", le="1.0") == 0
    assert value(now, "studio_export_duration_seconds_bucket", format="adapter", le="5.0") == 1
    assert value(now, "studio_analysis_duration_seconds_sum", kind="stats") == pytest.approx(2, abs=0.5)

    assert value(now, "studio_job_tokens_per_second", job_id=str(running)) == 1234.5
    assert value(now, "studio_tokens_per_second") == 1234.5


def test_an_unreachable_database_is_reported_not_a_failed_scrape(
    scrape: Scrape, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDIO_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:9/nowhere")
    samples = scrape()
    assert value(samples, "studio_up", source="database") == 0
    assert value(samples, "studio_up", source="broker") == 1  # the other source's families still arrive
    assert value(samples, "studio_queue_depth", queue=QUEUE) == 0
    assert not any(s.name == "studio_jobs" for s in samples)  # left out, never reported as zero jobs


def test_queue_depth_counts_what_waits_in_the_broker(scrape: Scrape) -> None:
    """Embedded: kombu's SQLite tables; server mode: the Redis lists (no worker consumes them here). Each job is
    placed on a free registered training worker and waits in that worker's own queue."""
    owner = _owner()
    dataset = _dataset(owner)
    names = [f"w-depth-{i}" for i in range(3)]
    for name in names:
        register_worker(QUEUE, name=name)
    for _ in range(3):
        assert send(JOB, _job(owner, dataset, "queued"))
    samples = scrape()
    assert [value(samples, "studio_queue_depth", queue=worker_queue(name)) for name in names] == [1, 1, 1]
    assert value(samples, "studio_queue_depth", queue=QUEUE) == 0
    assert value(samples, "studio_queue_depth", queue=ANALYSIS_QUEUE) == 0


@pytest.fixture
def fast_reaper(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Scrape:
    """`scrape` on an app whose lease reaper sweeps five times a second."""
    monkeypatch.setenv("STUDIO_REAP_INTERVAL_SECONDS", "0.2")
    scraper: Scrape = request.getfixturevalue("scrape")
    return scraper


def test_an_expired_lease_is_counted_by_the_reaper(fast_reaper: Scrape) -> None:
    def expiries() -> float:
        found = [
            s.value
            for s in fast_reaper()
            if s.name == "studio_lease_expiries_total" and s.labels == {"kind": "job", "outcome": "requeued"}
        ]
        return float(found[0]) if found else 0.0  # the counters live as long as this test process

    before = expiries()
    owner = _owner()
    lost = utcnow() - timedelta(hours=1)
    job_id = _job(
        owner, _dataset(owner), "running", started_at=lost, lease_worker="gone@host", heartbeat_at=lost, attempt=1
    )
    deadline = time.monotonic() + 15
    while expiries() == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert expiries() == before + 1
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.lease_worker is None


def _request(host: str, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/metrics", "headers": raw, "client": (host, 40000)})


def test_who_may_scrape(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # No token set: closed to everyone, this machine included (a proxy on the host would make every visitor local).
    monkeypatch.delenv("STUDIO_METRICS_TOKEN", raising=False)
    assert not may_scrape(_request("127.0.0.1")) and not may_scrape(_request("::1"))
    refused = client.get("/metrics")  # a user's session is no scrape token
    assert refused.status_code == 403 and "STUDIO_METRICS_TOKEN" in refused.text

    monkeypatch.setenv("STUDIO_METRICS_TOKEN", TOKEN)
    assert not may_scrape(_request("127.0.0.1"))  # the token is the only way in
    assert may_scrape(_request("10.0.0.7", {"Authorization": f"Bearer {TOKEN}"}))
    wrong = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_json_log_lines_carry_the_job_id() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("studio.test.json")
    logger.addHandler(handler(stream, json_lines=True))
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("plain %s", "line")
        logger.info("given explicitly", extra={"job_id": 7})
        with job_logging(12):
            logger.error("inside a run")
            try:
                raise ValueError("bad")
            except ValueError:
                logger.exception("with a traceback")
    finally:
        logger.handlers.clear()
    plain, given, inside, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert plain.keys() == {"time", "level", "logger", "message"}
    assert plain["level"] == "WARNING" and plain["logger"] == "studio.test.json" and plain["message"] == "plain line"
    assert plain["time"].endswith("+00:00")
    assert given["job_id"] == 7 and inside["job_id"] == 12
    assert failed["job_id"] == 12 and "ValueError: bad" in failed["exception"]


@pytest.fixture
def server(server_studio: StudioProcess) -> Iterator[StudioProcess]:
    server_studio.wait_healthy(timeout=10)
    yield server_studio


def test_a_server_mode_api_reports_its_redis_queues(server: StudioProcess) -> None:
    """`studio api` on PostgreSQL + Redis, scraped over HTTP as Prometheus would."""
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401  # without the token, no metrics
    res = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert res.status_code == 200, res.text
    samples = parse(res.text)
    assert value(samples, "studio_up", source="broker") == 1 and value(samples, "studio_up", source="database") == 1
    broker = redis.Redis.from_url(server.env["STUDIO_BROKER_URL"])
    assert value(samples, "studio_queue_depth", queue=QUEUE) == broker.llen(QUEUE)
    assert value(samples, "studio_queue_depth", queue=ANALYSIS_QUEUE) == broker.llen(ANALYSIS_QUEUE)
    assert any(s.name == "process_resident_memory_bytes" for s in samples)


def test_studio_api_writes_json_lines(tmp_path: Path) -> None:
    """`studio api` with STUDIO_LOG_FORMAT=json: uvicorn's own lines (startup, access) come out as JSON too."""
    port = free_port()
    env = {**os.environ, "STUDIO_DATA_DIR": str(tmp_path), "STUDIO_PORT": str(port), "STUDIO_LOG_FORMAT": "json"}
    env = {k: v for k, v in env.items() if k not in ("STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "STUDIO_REDIS_URL")}
    api = subprocess.Popen([*STUDIO, "api"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
    finally:
        api.terminate()
        _, err = api.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(line["logger"] == "uvicorn.error" and "startup complete" in line["message"] for line in lines), err
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access and "GET /api/health" in access[-1]["message"] and access[-1]["level"] == "INFO"
