"""Pause, resume, clone, checkpoints and watch-prompt samples through the API (no worker: the test plays it)."""

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def text_dataset(client: TestClient) -> int:
    res = client.post("/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))})
    return int(res.json()["id"])


@pytest.fixture
def job(client: TestClient, text_dataset: int) -> dict:
    body = {
        "kind": "pretrain",
        "architecture": "tiny",
        "dataset_id": text_dataset,
        "hyperparameters": {"max_steps": 30, "learning_rate": 1e-3},
        "watch_prompts": ["Once upon a time"],
    }
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    return res.json()


def fake_checkpoint(job_id: int, step: int) -> Path:
    """What the Trainer leaves on disk: a checkpoint-<step> folder whose trainer_state.json is written last."""
    from backend.job.checkpoints import checkpoint_dir

    path = checkpoint_dir(job_id) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * 100)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_watch_prompts_are_stored_and_validated(client: TestClient, text_dataset: int, job: dict) -> None:
    assert job["watch_prompts"] == ["Once upon a time"]
    assert (job["attempt"], job["attempt_limit"]) == (0, 4)  # no worker has started it; STUDIO_MAX_ATTEMPTS=4
    base = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}
    for prompts in (["a"] * 6, ["x" * 2001], [""], ["nul\x00"]):
        res = client.post("/api/jobs", json={**base, "watch_prompts": prompts})
        assert res.status_code == 422, prompts
        assert any("watch_prompts" in err["loc"] for err in res.json()["detail"])


def test_pause_needs_a_running_job_and_ends_paused(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import beat, claim_job, finish_job

    res = client.post(f"/api/jobs/{job['id']}/pause")
    assert res.status_code == 409 and "only a running job" in res.text
    assert claim_job(job["id"], "w1")
    paused = client.post(f"/api/jobs/{job['id']}/pause").json()
    assert (paused["status"], paused["pause_requested"]) == ("running", True)
    assert beat(job["id"], step=3, total_steps=30) == "pause"
    checkpoint = fake_checkpoint(job["id"], 3)
    finish_job(job["id"], "paused", resume_checkpoint=str(checkpoint))
    after = client.get(f"/api/jobs/{job['id']}").json()
    assert (after["status"], after["pause_requested"], after["resume_checkpoint"]) == (
        "paused",
        False,
        "checkpoint-3",  # the name only: where the server keeps files is not the client's business
    )


def test_resume_requeues_from_the_latest_checkpoint(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import claim_job, finish_job

    claim_job(job["id"], "w1")
    finish_job(job["id"], "failed", error="boom")
    res = client.post(f"/api/jobs/{job['id']}/resume")
    assert res.status_code == 409 and "no checkpoint" in res.text

    fake_checkpoint(job["id"], 10)
    fake_checkpoint(job["id"], 20)
    (fake_checkpoint(job["id"], 25) / "trainer_state.json").unlink()  # cut short mid-save: not a checkpoint
    listed = client.get(f"/api/jobs/{job['id']}/checkpoints").json()
    assert [(c["name"], c["step"]) for c in listed] == [("checkpoint-10", 10), ("checkpoint-20", 20)]
    assert all(c["size_bytes"] > 100 and "path" not in c for c in listed)

    resumed = client.post(f"/api/jobs/{job['id']}/resume").json()
    assert (resumed["status"], resumed["attempt"], resumed["error"]) == ("queued", 1, None)
    assert resumed["attempt_limit"] == 1 + 4  # a person resuming it counts the automatic retries afresh
    assert resumed["resume_checkpoint"] == "checkpoint-20"
    assert client.post(f"/api/jobs/{job['id']}/resume").status_code == 409  # already queued
    again = claim_job(job["id"], "w2")  # the worker takes it again, as the next attempt
    assert again is not None and again.attempt == 2


def test_cancelled_and_paused_jobs_resume_but_succeeded_ones_do_not(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import claim_job, finish_job

    fake_checkpoint(job["id"], 5)
    client.post(f"/api/jobs/{job['id']}/cancel")  # cancelled while queued
    assert client.post(f"/api/jobs/{job['id']}/resume").json()["status"] == "queued"
    claim_job(job["id"], "w1")
    finish_job(job["id"], "paused")
    cancelled = client.post(f"/api/jobs/{job['id']}/cancel").json()  # a paused job cancels at once
    assert cancelled["status"] == "cancelled"
    client.post(f"/api/jobs/{job['id']}/resume")
    claim_job(job["id"], "w1")
    finish_job(job["id"], "succeeded")
    res = client.post(f"/api/jobs/{job['id']}/resume")
    assert res.status_code == 409 and "succeeded" in res.text


def test_clone_copies_the_inputs_with_overrides(client: TestClient, job: dict) -> None:
    res = client.post(f"/api/jobs/{job['id']}/clone", json={"hyperparameters": {"learning_rate": 5e-4}})
    assert res.status_code == 201, res.text
    clone = res.json()
    assert clone["id"] != job["id"] and clone["cloned_from_id"] == job["id"]
    assert clone["status"] == "queued" and clone["name"] == f"{job['name']} (clone)"
    assert clone["hyperparameters"] == {**job["hyperparameters"], "learning_rate": 5e-4}
    assert (clone["kind"], clone["dataset_id"], clone["architecture"]) == ("pretrain", job["dataset_id"], "tiny")
    assert clone["watch_prompts"] == job["watch_prompts"]

    plain = client.post(f"/api/jobs/{job['id']}/clone")  # no body: an exact copy
    assert plain.status_code == 201 and plain.json()["hyperparameters"] == job["hyperparameters"]
    bad = client.post(f"/api/jobs/{job['id']}/clone", json={"hyperparameters": {"learning_rate": -1}})
    assert bad.status_code == 422 and "learning_rate" in bad.text


def test_samples_are_listed_in_order(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import record_samples

    assert client.get(f"/api/jobs/{job['id']}/samples").json() == []
    record_samples(job["id"], 10, [("Once upon a time", "there was")])
    record_samples(job["id"], 20, [("Once upon a time", "there was a fox")])
    samples = client.get(f"/api/jobs/{job['id']}/samples").json()
    assert [(s["step"], s["output"]) for s in samples] == [(10, "there was"), (20, "there was a fox")]


def test_another_user_cannot_control_the_job(client: TestClient, job: dict) -> None:
    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope

    with session_scope() as s:
        other = create_user(s, email="other@example.com", password="password123", is_admin=False)
        token = issue_token(s, user=other, kind="api")
    headers = {"Authorization": f"Bearer {token}"}
    for action in ("pause", "resume", "clone"):
        assert client.post(f"/api/jobs/{job['id']}/{action}", headers=headers).status_code == 404
    for listing in ("checkpoints", "samples"):
        assert client.get(f"/api/jobs/{job['id']}/{listing}", headers=headers).status_code == 404


# --- resume from a chosen checkpoint ------------------------------------------------------------------------------


def test_resume_from_an_older_checkpoint_drops_what_came_after(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import claim_job, finish_job, record_points, record_samples, update_job

    claim_job(job["id"], "w1")
    for step in range(1, 31):
        values = {"loss": 5.0 - step / 10} | ({"eval_loss": 6.0 - step / 10} if step % 10 == 0 else {})
        record_points(job["id"], [(step, values)])
    for step in (10, 20, 30):
        record_samples(job["id"], step, [("Once upon a time", f"answer at {step}")])
    update_job(job["id"], current_step=30, final_loss=2.0, final_eval_loss=3.0)
    for step in (10, 20, 30):
        fake_checkpoint(job["id"], step)
    finish_job(job["id"], "paused")

    res = client.post(f"/api/jobs/{job['id']}/resume", json={"checkpoint": "checkpoint-10"})
    assert res.status_code == 200, res.text
    resumed = res.json()
    assert (resumed["status"], resumed["resume_checkpoint"], resumed["current_step"]) == ("queued", "checkpoint-10", 10)
    # The final losses now describe step 10, where the run continues from.
    assert (resumed["final_loss"], resumed["final_eval_loss"]) == (pytest.approx(4.0), pytest.approx(5.0))
    steps = [m["step"] for m in client.get(f"/api/jobs/{job['id']}/metrics").json()]
    assert steps == list(range(1, 11))
    assert [s["step"] for s in client.get(f"/api/jobs/{job['id']}/samples").json()] == [10]
    assert [c["name"] for c in client.get(f"/api/jobs/{job['id']}/checkpoints").json()] == ["checkpoint-10"]
    messages = [e["message"] for e in client.get(f"/api/jobs/{job['id']}/events").json()]
    assert "resume queued from checkpoint-10" in messages
    assert any(
        m.startswith("dropped what came after step 10: 20 metric points, 2 watch-prompt answers") for m in messages
    )
    # What the worker does next: the resumed run plots only the steps after the last stored one.
    from backend.job.lifecycle import last_metric_step

    assert last_metric_step(job["id"]) == 10


def test_resume_names_an_unknown_checkpoint(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import claim_job, finish_job

    claim_job(job["id"], "w1")
    fake_checkpoint(job["id"], 10)
    finish_job(job["id"], "failed", error="boom")
    for name in ("checkpoint-99", "../../etc", "checkpoint-10/.."):
        res = client.post(f"/api/jobs/{job['id']}/resume", json={"checkpoint": name})
        assert res.status_code == 422, (name, res.text)
        assert res.json()["field"] == "checkpoint" and "checkpoint-10" in res.json()["detail"]
    bad = client.post(f"/api/jobs/{job['id']}/resume", json={"checkpoint": "checkpoint-10", "step": 3})
    assert bad.status_code == 422 and "step" in bad.text  # unknown fields are refused
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "failed"  # nothing changed
    ok = client.post(f"/api/jobs/{job['id']}/resume", json={"checkpoint": "checkpoint-10"})
    assert ok.status_code == 200 and ok.json()["resume_checkpoint"] == "checkpoint-10"


def test_resume_from_the_latest_keeps_every_point(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import claim_job, finish_job, record_points

    claim_job(job["id"], "w1")
    for step in range(1, 6):
        record_points(job["id"], [(step, {"loss": 1.0})])
    fake_checkpoint(job["id"], 5)
    finish_job(job["id"], "paused")
    res = client.post(f"/api/jobs/{job['id']}/resume", json={})
    assert res.status_code == 200 and res.json()["resume_checkpoint"] == "checkpoint-5"
    assert len(client.get(f"/api/jobs/{job['id']}/metrics").json()) == 5
    assert not any("dropped" in e["message"] for e in client.get(f"/api/jobs/{job['id']}/events").json())


# --- the list's extra columns, clone and edit, presets, and which jobs used a model or dataset --------------------


def test_job_read_names_the_dataset_and_a_duration(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import claim_job, finish_job

    assert job["dataset_name"] == "tiny" and job["base_model_name"] is None
    assert job["duration_seconds"] is None  # not started
    claim_job(job["id"], "w1")
    finish_job(job["id"], "succeeded")
    done = client.get("/api/jobs").json()["items"][0]
    assert done["id"] == job["id"] and done["duration_seconds"] is not None and done["duration_seconds"] >= 0


def test_clone_and_edit_records_the_source(client: TestClient, job: dict, text_dataset: int) -> None:
    page = client.get(f"/jobs/new?clone={job['id']}")
    assert page.status_code == 200 and 'id="job-clone-note"' in page.text
    assert f'"id": {job["id"]}' in page.text  # the source job is in the page's JSON for the form to fill in
    assert client.get("/jobs/new?clone=999999").status_code == 404
    body = {
        "kind": "pretrain",
        "architecture": "tiny",
        "dataset_id": text_dataset,
        "hyperparameters": {"max_steps": 7},
        "cloned_from": job["id"],
    }
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    assert res.json()["cloned_from_id"] == job["id"]
    events = [e["message"] for e in client.get(f"/api/jobs/{res.json()['id']}/events").json()]
    assert f"cloned from job {job['id']} and edited" in events
    missing = client.post("/api/jobs", json={**body, "cloned_from": 999999})
    assert missing.status_code == 422 and missing.json()["field"] == "cloned_from"


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
@pytest.mark.parametrize("name", ["quick", "balanced", "thorough"])
def test_presets_are_valid_hyperparameters(name: str, kind: str) -> None:
    from backend.job.schemas import HYPERPARAMETER_PRESETS, Hyperparameters, preset_values

    values = preset_values(name, kind)
    hp = Hyperparameters.model_validate({k: v for k, v in values.items() if v is not None})
    assert hp.learning_rate == values["learning_rate"] and HYPERPARAMETER_PRESETS[name]["description"]
    assert set(values) <= set(Hyperparameters.model_fields)
    # Every preset sets the same fields, so clicking one after another never leaves a mix of both behind.
    assert set(values) == set(preset_values("quick", "pretrain"))


def test_new_job_page_offers_the_presets(client: TestClient) -> None:
    page = client.get("/jobs/new").text
    for name in ("quick", "balanced", "thorough"):
        assert f'data-preset="{name}"' in page and f'id="preset-{name}-help"' in page


def test_pages_list_the_jobs_that_used_a_dataset(client: TestClient, job: dict, text_dataset: int) -> None:
    page = client.get(f"/datasets/{text_dataset}").text
    assert 'id="dataset-used-by"' in page and f'href="/jobs/{job["id"]}"' in page
    other = client.post(
        "/api/datasets", files={"file": ("other.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))}
    ).json()
    assert "No job has trained on this dataset yet" in client.get(f"/datasets/{other['id']}").text


def test_models_page_lists_the_jobs_that_used_a_model(client: TestClient, text_dataset: int) -> None:
    from tests.api.test_models import model_files, zipped

    used = client.post("/api/models", files={"file": ("used.zip", io.BytesIO(zipped(model_files())))}).json()
    unused = client.post("/api/models", files={"file": ("unused.zip", io.BytesIO(zipped(model_files())))}).json()
    body = {"kind": "finetune", "dataset_id": text_dataset, "base_model": used["id"], "objective": "causal_lm"}
    tuned = client.post("/api/jobs", json={**body, "name": "tuned-on-used"}).json()
    assert tuned["base_model_name"] == "used"
    page = client.get("/models").text
    row = page[page.index(f'id="model-{used["id"]}"') :].split("</tr>", 1)[0]
    assert f'href="/jobs/{tuned["id"]}"' in row and "tuned-on-used" in row
    other = page[page.index(f'id="model-{unused["id"]}"') :].split("</tr>", 1)[0]
    assert 'data-job-count="0"' in other and "no jobs" in other
