"""A training worker lost mid-run, every way an operator meets it, on a server-mode stack (PostgreSQL, a Redis of the
test's own, real `studio api` / `studio worker` processes): the job comes back by itself and finishes.

The lease is 10 s and heartbeats come every second (tests.support.StudioProcess), so recovery takes seconds."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.reliability.faults import (
    HP,
    RedisServer,
    alive,
    children,
    events,
    final_weights,
    loss_steps,
    server_studio,
    signal_group,
    submit,
    wait_for_step,
    wait_running,
)
from tests.support import StudioProcess

pytestmark = [pytest.mark.slow, pytest.mark.server]


def start(database: str, redis: RedisServer, tmp_path: Path, **env: str) -> StudioProcess:
    studio = server_studio(database, redis, tmp_path / "data", tmp_path / "logs", **env)
    return studio.__enter__()


def test_killed_worker_job_resumes_on_a_fresh_worker_with_the_same_weights(
    database: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    studio = start(database, redis_server, tmp_path)
    try:
        client = studio.client()
        reference = submit(client)
        studio.wait_job(client, reference["id"], ("succeeded",))

        job = submit(client)
        wait_for_step(studio, client, job["id"], 25)  # checkpoint-20 is on disk
        studio.stop("worker", signal.SIGKILL)  # the machine is gone: no checkpoint, no goodbye
        killed_at = client.get(f"/api/jobs/{job['id']}").json()["current_step"]
        studio.start_worker("fresh")

        done = studio.wait_job(client, job["id"], ("succeeded", "failed"), timeout=300)
        assert done["status"] == "succeeded", events(client, job["id"])
        assert (done["attempt"], done["attempt_limit"]) == (2, 4)
        lost = [m for m in events(client, job["id"]) if " lost at step " in m]
        assert len(lost) == 1 and "resuming from checkpoint-20 (attempt 2 of 4)" in lost[0], lost
        assert f"lost at step {killed_at}" in lost[0] or killed_at > 20
        # Exactly one point per step, though steps 21.. ran twice.
        assert loss_steps(client, job["id"]) == list(range(1, HP["max_steps"] + 1))
        # The recovered run is the run that was never interrupted: same seed, same data order, same weights.
        ours, theirs = final_weights(studio.data_dir, job["id"]), final_weights(studio.data_dir, reference["id"])
        assert ours.keys() == theirs.keys()
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    finally:
        studio.__exit__(None, None, None)


def test_killed_pool_child_is_resumed_by_the_same_worker_without_waiting_for_the_lease(
    database: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # A lease far longer than the test: only the worker's own recovery can bring the job back in time.
    studio = start(database, redis_server, tmp_path, STUDIO_LEASE_SECONDS="600")
    try:
        client = studio.client()
        job = submit(client)
        wait_for_step(studio, client, job["id"], 25)
        (child,) = children(studio.procs["worker"].pid)
        subprocess.run(["kill", "-KILL", str(child)], check=True)  # what the OOM killer does

        done = studio.wait_job(client, job["id"], ("succeeded", "failed"), timeout=240)
        assert done["status"] == "succeeded", events(client, job["id"])
        assert done["attempt"] == 2
        assert any("resuming from checkpoint-20 (attempt 2 of 4)" in m for m in events(client, job["id"]))
        assert loss_steps(client, job["id"]) == list(range(1, HP["max_steps"] + 1))
    finally:
        studio.__exit__(None, None, None)


@pytest.mark.parametrize("target", ["group", "main process"])
def test_sigterm_checkpoints_and_gives_the_job_back(
    database: str, redis_server: RedisServer, tmp_path: Path, target: str
) -> None:
    studio = start(database, redis_server, tmp_path, STUDIO_LEASE_SECONDS="600")
    try:
        client = studio.client()
        job = submit(client, checkpoint_steps=None)
        wait_running(client, job["id"], 5)
        proc = studio.procs["worker"]
        if target == "group":  # systemd, docker stop
            signal_group(studio, "worker", signal.SIGTERM)
        else:  # a person: kill <celery pid>; Celery's warm shutdown alone would wait for the whole run
            proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=60)
        assert time.monotonic() - started < 45  # the grace (30 s) and an exit, not the remaining run
        # A worker that stops (not killed) leaves the registry: the Workers page no longer lists it.
        names = [w["name"] for w in client.get("/api/workers").json()["items"]]
        assert not [n for n in names if f"worker-{studio.port}" in n], names

        given_back = client.get(f"/api/jobs/{job['id']}").json()
        assert given_back["status"] == "queued", events(client, job["id"])
        checkpoints = client.get(f"/api/jobs/{job['id']}/checkpoints").json()
        assert checkpoints and checkpoints[-1]["step"] == given_back["current_step"] > 0
        note = next(m for m in events(client, job["id"]) if "shutting down" in m and "back in the queue" in m)
        assert f"checkpoint-{checkpoints[-1]['step']} saved" in note

        studio.procs.pop("worker")
        studio.start_worker("next")
        done = studio.wait_job(client, job["id"], ("succeeded", "failed"), timeout=300)
        assert done["status"] == "succeeded" and done["attempt"] == 2, events(client, job["id"])
        assert loss_steps(client, job["id"]) == list(range(1, HP["max_steps"] + 1))
    finally:
        studio.__exit__(None, None, None)


def test_attempts_run_out(database: str, redis_server: RedisServer, tmp_path: Path) -> None:
    studio = start(database, redis_server, tmp_path, STUDIO_MAX_ATTEMPTS="1")
    try:
        client = studio.client()
        job = submit(client)
        wait_for_step(studio, client, job["id"], 25)
        studio.stop("worker", signal.SIGKILL)
        studio.start_worker("fresh")
        done = studio.wait_job(client, job["id"], ("failed", "succeeded"), timeout=120)
        assert done["status"] == "failed"
        assert "on attempt 1 of 1: no attempts left (STUDIO_MAX_ATTEMPTS=1)" in done["error"]
        # A person may still resume it: the automatic attempts count afresh from there.
        res = client.post(f"/api/jobs/{job['id']}/resume")
        assert res.status_code == 200, res.text
        done = studio.wait_job(client, job["id"], ("succeeded", "failed"), timeout=240)
        assert done["status"] == "succeeded" and (done["attempt"], done["attempt_limit"]) == (2, 2)
    finally:
        studio.__exit__(None, None, None)


def test_sigterm_to_studio_up_stops_every_process_it_started(tmp_path: Path) -> None:
    env = {"STUDIO_DATA_DIR": str(tmp_path / "data")}
    studio = StudioProcess(env, log_dir=tmp_path / "logs")
    studio.env.update({"STUDIO_LEASE_SECONDS": "600"})
    studio.__enter__()
    try:
        client = studio.client()
        job = submit(client, checkpoint_steps=None)
        wait_running(client, job["id"], 5)
        up = studio.procs["up"]
        workers = children(up.pid)
        descendants = workers + [c for w in workers for c in children(w)]
        assert len(workers) == 2 and descendants
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=90)
        assert not [pid for pid in descendants if alive(pid)], "orphans left running"
        studio.procs.pop("up")

        # The job waits, checkpointed, for the next start of the studio.
        studio.start("up", "up", "--worker-name", f"embedded-{studio.port}")
        studio.wait_healthy()
        client = studio.client()
        assert any("back in the queue" in m for m in events(client, job["id"]))
        done = studio.wait_job(client, job["id"], ("succeeded", "failed"), timeout=300)
        assert done["status"] == "succeeded" and done["attempt"] == 2, events(client, job["id"])
    finally:
        studio.__exit__(None, None, None)


def test_studio_up_killed_outright_resumes_its_job_at_the_next_start_without_waiting_for_the_lease(
    tmp_path: Path,
) -> None:
    # A lease far longer than the test: only the restarted worker's recovery of what its name held brings the job
    # back in time (a worker named anew at each start would leave it for the whole lease).
    studio = StudioProcess({"STUDIO_DATA_DIR": str(tmp_path / "data")}, log_dir=tmp_path / "logs")
    studio.env.update({"STUDIO_LEASE_SECONDS": "600"})
    studio.__enter__()
    try:
        client = studio.client()
        job = submit(client)
        wait_for_step(studio, client, job["id"], 25)  # checkpoint-20 is on disk
        up = studio.procs.pop("up")
        tree = [up.pid, *children(up.pid)]
        tree += [c for pid in tree[1:] for c in children(pid)]
        for pid in tree:  # the machine lost power: no checkpoint, no goodbye, the lease still held
            subprocess.run(["kill", "-KILL", str(pid)], check=False)
        up.wait(timeout=30)

        restarted = time.monotonic()
        studio.start("up", "up", "--worker-name", f"embedded-{studio.port}")
        studio.wait_healthy()
        client = studio.client()
        done = studio.wait_job(client, job["id"], ("succeeded", "failed"), timeout=240)
        assert done["status"] == "succeeded" and done["attempt"] == 2, events(client, job["id"])
        assert time.monotonic() - restarted < 300  # well inside the 600 s lease
        assert any("resuming from checkpoint-20 (attempt 2 of 4)" in m for m in events(client, job["id"]))
        assert loss_steps(client, job["id"]) == list(range(1, HP["max_steps"] + 1))
    finally:
        studio.__exit__(None, None, None)


def test_studio_up_killed_alone_stops_the_workers_it_left_at_the_next_start(tmp_path: Path) -> None:
    # Only `up` dies (kill -9: no `finally`); its workers run in sessions of their own and go on training. The next
    # start must stop them (the job checkpoints and goes back to the queue) rather than train beside them under
    # the same names and queues.
    studio = StudioProcess({"STUDIO_DATA_DIR": str(tmp_path / "data")}, log_dir=tmp_path / "logs")
    studio.env.update({"STUDIO_LEASE_SECONDS": "600"})
    studio.__enter__()
    try:
        client = studio.client()
        job = submit(client, max_steps=100_000)  # still training when the next start comes
        wait_for_step(studio, client, job["id"], 25)
        up = studio.procs.pop("up")
        left = children(up.pid)
        assert len(left) == 2
        up.kill()
        up.wait(timeout=30)
        time.sleep(2)
        assert all(alive(pid) for pid in left)  # orphans, still training

        studio.start("up", "up", "--worker-name", f"embedded-{studio.port}")
        studio.wait_healthy()
        client = studio.client()
        deadline = time.monotonic() + 240
        while (now := client.get(f"/api/jobs/{job['id']}").json())["attempt"] < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert now["status"] == "running" and now["attempt"] == 2, events(client, job["id"])  # the new worker's
        assert not [pid for pid in left if alive(pid)], "the earlier start's workers are still running"
        assert any("back in the queue" in m for m in events(client, job["id"]))
        assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    finally:
        studio.__exit__(None, None, None)
