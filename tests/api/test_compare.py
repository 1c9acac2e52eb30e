"""Comparing runs: curves on step/tokens/FLOPs/time axes, side-by-side summaries, and the settings that differ."""

import io
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from backend.db import Job, JobMetric, session_scope, utcnow

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _job(client: TestClient, dataset_id: int, **hp: object) -> int:
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": dataset_id, "hyperparameters": hp}
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


def _record_run(job_id: int, *, total_parameters: int, losses: list[float]) -> None:
    """What a worker leaves behind: resolved config, one metric row per step (eval every other step)."""
    start = utcnow()
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.resolved_config = {"parameters": {"trainable": total_parameters, "total": total_parameters}}
        job.status, job.current_step, job.final_loss = "succeeded", len(losses), losses[-1]
        job.final_eval_loss = losses[-1] + 0.1
        for step, loss in enumerate(losses, start=1):
            values = {"loss": loss, "tokens_seen": 512.0 * step}
            if step % 2 == 0:
                values["eval_loss"] = loss + 0.1
                values["eval_bits_per_byte"] = (loss + 0.1) / 4
            s.add(JobMetric(job_id=job_id, step=step, values=values, created_at=start + timedelta(seconds=step)))


def test_compare_two_runs(client: TestClient) -> None:
    upload = client.post(
        "/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))}
    )
    dataset_id = upload.json()["id"]
    a = _job(client, dataset_id, learning_rate=1e-3, max_steps=4)
    b = _job(client, dataset_id, learning_rate=3e-4, max_steps=4)
    _record_run(a, total_parameters=1000, losses=[4.0, 3.5, 3.0, 2.5])
    _record_run(b, total_parameters=1000, losses=[4.0, 3.8, 3.6, 3.4])

    res = client.get("/api/jobs/compare", params={"ids": [b, a]})
    assert res.status_code == 200, res.text
    body = res.json()
    assert [r["id"] for r in body["runs"]] == [b, a]  # the order asked for
    run_a = body["runs"][1]
    assert run_a["steps"] == 4 and run_a["tokens"] == 2048.0
    assert run_a["flops"] == 6 * 1000 * 2048.0  # 6·N per token without the worker's own figure
    assert run_a["best_eval_loss"] == 2.6 and run_a["seconds"] == 3.0
    assert [p["step"] for p in run_a["curve"]] == [1, 2, 3, 4]
    assert run_a["curve"][1]["values"] == {"loss": 3.5, "eval_loss": 3.6, "eval_bits_per_byte": 0.9}
    assert run_a["final_eval_bits_per_byte"] == 2.6 / 4
    assert run_a["curve"][3]["flops"] == 6 * 1000 * 2048.0
    # Only what differs: the learning rate (max_steps and everything else are equal).
    assert body["diff"] == {"hyperparameters.learning_rate": [3e-4, 1e-3]}

    page = client.get("/compare", params={"ids": [a, b]})
    assert page.status_code == 200 and 'id="compare-chart"' in page.text


def test_compare_refuses_bad_selections(client: TestClient) -> None:
    assert client.get("/api/jobs/compare").status_code == 422  # no ids
    assert client.get("/api/jobs/compare", params={"ids": [0]}).status_code == 422
    assert client.get("/api/jobs/compare", params={"ids": list(range(1, 10))}).status_code == 422
    missing = client.get("/api/jobs/compare", params={"ids": [999999]})
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]
