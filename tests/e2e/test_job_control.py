"""Pause and resume with real processes: the worker saves a checkpoint, stops, and later continues from it.

Server mode only (the warm PostgreSQL + Redis studio): a pause is a flag in the database and a resume a new task on
the broker, the same paths test_loop.py's cancel and duplicate delivery take on both backends. The embedded studio
pauses and resumes through the job page in tests/browser/test_job_actions_ui.py, and
tests/workers/test_training_control.py checks the recipe's side (optimizer state, LoRA, DPO) in depth.
"""

import time

import httpx
import pytest

from tests.e2e.test_loop import pretrain, upload
from tests.support import StudioProcess

MAX_STEPS = 120
pytestmark = [pytest.mark.parametrize("shared_studio", ["postgres"], indirect=True), pytest.mark.slow]


def wait_for_step(client: httpx.Client, job_id: int, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(f"/api/jobs/{job_id}").json()["current_step"] >= step:
            return
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} never reached step {step}")


def test_pause_then_resume_continues_from_the_checkpoint(shared_studio: StudioProcess) -> None:
    studio = shared_studio
    client = studio.client()
    job = pretrain(client, upload(client, "tiny.txt")["id"], max_steps=MAX_STEPS, eval_steps=40, checkpoint_steps=40)
    wait_for_step(client, job["id"], 5)
    res = client.post(f"/api/jobs/{job['id']}/pause")
    assert res.status_code == 200, res.text

    paused = studio.wait_job(client, job["id"], ("paused", "succeeded", "failed"), timeout=120)
    assert paused["status"] == "paused", paused
    checkpoints = client.get(f"/api/jobs/{job['id']}/checkpoints").json()
    assert checkpoints and checkpoints[-1]["name"] == paused["resume_checkpoint"]
    paused_at = checkpoints[-1]["step"]
    assert 5 <= paused_at < MAX_STEPS

    resumed = client.post(f"/api/jobs/{job['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    done = studio.wait_job(client, job["id"], ("succeeded", "failed", "cancelled"), timeout=240)
    assert done["status"] == "succeeded", done
    assert (done["current_step"], done["attempt"]) == (MAX_STEPS, 2)  # the first run, then the resumed one

    metrics = client.get(f"/api/jobs/{job['id']}/metrics").json()
    steps = [m["step"] for m in metrics if "loss" in m["values"]]
    assert steps == sorted(set(steps)) and steps[-1] == MAX_STEPS  # strictly increasing: no step twice
    assert steps == list(range(1, MAX_STEPS + 1))  # and none missing across the pause
    messages = [e["message"] for e in client.get(f"/api/jobs/{job['id']}/events").json()]
    assert f"resuming from checkpoint-{paused_at}" in messages


def test_resume_from_an_older_checkpoint_plots_each_step_once(shared_studio: StudioProcess) -> None:
    studio = shared_studio
    client = studio.client()
    job = pretrain(
        client,
        upload(client, "tiny.txt")["id"],
        max_steps=MAX_STEPS,
        eval_steps=40,
        checkpoint_steps=10,
        keep_checkpoints=5,
    )
    wait_for_step(client, job["id"], 25)
    assert client.post(f"/api/jobs/{job['id']}/pause").status_code == 200
    paused = studio.wait_job(client, job["id"], ("paused", "succeeded", "failed"), timeout=120)
    assert paused["status"] == "paused", paused
    checkpoints = client.get(f"/api/jobs/{job['id']}/checkpoints").json()
    older = checkpoints[-2]  # the pause saved the last one; go back one further
    assert older["step"] < paused["current_step"]
    before = client.get(f"/api/jobs/{job['id']}/metrics").json()
    assert max(m["step"] for m in before) > older["step"]

    res = client.post(f"/api/jobs/{job['id']}/resume", json={"checkpoint": older["name"]})
    assert res.status_code == 200, res.text
    assert (res.json()["resume_checkpoint"], res.json()["current_step"]) == (older["name"], older["step"])
    done = studio.wait_job(client, job["id"], ("succeeded", "failed", "cancelled"), timeout=240)
    assert done["status"] == "succeeded", done
    assert done["current_step"] == MAX_STEPS

    # One point per step: the dropped steps were trained again from the older checkpoint and logged once.
    metrics = client.get(f"/api/jobs/{job['id']}/metrics").json()
    steps = [m["step"] for m in metrics if "loss" in m["values"]]
    assert steps == list(range(1, MAX_STEPS + 1))
    eval_steps = [m["step"] for m in metrics if "eval_loss" in m["values"]]
    assert eval_steps == sorted(set(eval_steps))
    messages = [e["message"] for e in client.get(f"/api/jobs/{job['id']}/events").json()]
    assert f"resuming from {older['name']}" in messages
    assert any(m.startswith(f"dropped what came after step {older['step']}:") for m in messages)
