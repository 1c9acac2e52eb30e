"""A worker's own /metrics, scraped over HTTP while it trains, and its JSON log lines carrying the job's id."""

import io
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from backend.db import Job, session_scope
from backend.observability.logs import handler
from backend.queue import ANALYSIS_QUEUE
from tests.support import free_port, reset_process_state
from tests.workers.support import Seed, create_job, get_job
from workers import observability, registry
from workers.tasks import run_job


@pytest.fixture(scope="module")
def port() -> int:
    """This test process serving worker metrics, as a pool child does with STUDIO_WORKER_METRICS_PORT."""
    port = free_port()
    assert observability.serve(port)
    return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the worker's /metrics over HTTP."""
    res = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert res.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none yet)."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_a_training_run_is_scraped_live_and_counted(seed: Seed, port: int) -> None:
    hp = {"max_steps": 100_000, "max_length": 32, "batch_size": 2, "validation_fraction": 0.0, "logging_steps": 1}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    before = scrape(port)
    seen: dict[str, float] = {}

    def watch() -> None:
        """Scrape until the run shows its step and throughput, then cancel it (as a person would)."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = scrape(port)
            step = total(now, "studio_worker_job_step", job_id=str(job_id))
            rate = total(now, "studio_worker_tokens_per_second")
            if step > 0 and rate > 0:
                seen.update(step=step, rate=rate, steps_total=total(now, "studio_worker_steps_total"))
                break
            time.sleep(0.1)
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert run_job(job_id) == "cancelled"
    watcher.join()

    assert seen, "the running job's step and tokens/s never showed on /metrics"
    trained = get_job(job_id).current_step
    assert seen["step"] <= trained
    after = scrape(port)
    assert total(after, "studio_worker_steps_total") - total(before, "studio_worker_steps_total") == trained
    assert seen["steps_total"] - total(before, "studio_worker_steps_total") == seen["step"]  # live, before the end
    assert total(after, "studio_worker_jobs_total", outcome="cancelled") == (
        total(before, "studio_worker_jobs_total", outcome="cancelled") + 1
    )
    assert total(after, "studio_worker_job_step") == 0 and total(after, "studio_worker_tokens_per_second") == 0


@pytest.fixture
def json_root_log() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a buffer, as `studio worker` does with STUDIO_LOG_FORMAT=json."""
    stream = io.StringIO()
    h = handler(stream, json_lines=True)
    logging.getLogger().addHandler(h)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(h)


def test_a_failed_task_is_counted_timed_and_logged_with_its_job(
    seed: Seed, port: int, json_root_log: io.StringIO
) -> None:
    import workers.main  # noqa: F401  (connects the task signals a worker process runs with)

    job_id = create_job(seed, kind="pretrain", architecture="enormous", hyperparameters={"max_steps": 2})
    before = scrape(port)
    sigterm = signal.getsignal(signal.SIGTERM)  # a task's start installs the pool child's graceful shutdown
    try:
        assert run_job.apply(args=[job_id]).get() == "failed"  # through Celery's tracer: its signals fire
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("studio_worker_failures_total") == 1
    assert moved("studio_worker_jobs_total", outcome="failed") == 1
    assert moved("studio_worker_task_seconds_count", task="studio.run_job") == 1
    assert moved("studio_worker_task_seconds_sum", task="studio.run_job") > 0

    lines = [json.loads(line) for line in json_root_log.getvalue().splitlines()]
    failed = [line for line in lines if line["message"] == f"job {job_id} failed"]
    assert len(failed) == 1
    assert failed[0]["job_id"] == job_id and failed[0]["level"] == "ERROR" and failed[0]["logger"] == "workers.tasks"
    assert "enormous" in failed[0]["exception"]


def test_heartbeats_are_counted(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_HEARTBEAT_SECONDS", "0.1")
    before = total(scrape(port), "studio_worker_heartbeats_total")
    registry.start(name="metrics-test@host", queue=ANALYSIS_QUEUE)  # an analysis worker: no peak matmul to time
    try:
        deadline = time.monotonic() + 20
        while total(scrape(port), "studio_worker_heartbeats_total") < before + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        registry.stop()
    assert total(scrape(port), "studio_worker_heartbeats_total") >= before + 3


def test_a_database_outage_leaves_the_jobs_figures_out_not_low(
    seed: Seed, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(seed, kind="pretrain", architecture="tiny")
    with observability.training(job_id):
        assert scrape(port)[("studio_worker_job_step", (("job_id", str(job_id)),))] == 0  # read: not started yet
        monkeypatch.setenv("STUDIO_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:9/nowhere")
        reset_process_state()
        try:
            during = scrape(port)
        finally:
            monkeypatch.undo()
            reset_process_state()
    names = {name for name, _ in during}
    assert "studio_worker_heartbeats_total" in names  # what this process counts itself still answers
    assert not names & {"studio_worker_steps_total", "studio_worker_job_step", "studio_worker_tokens_per_second"}
