"""The new-job form offers every method and objective, and its settings come from the hyperparameter schema."""

import io
from pathlib import Path
from typing import get_args

from fastapi.testclient import TestClient

from backend.job.schemas import Hyperparameters, Objective

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_new_job_form_lists_methods_objectives_and_every_setting(client: TestClient) -> None:
    res = client.get("/jobs/new")
    assert res.status_code == 200
    page = res.text
    for method in ("lora", "qlora", "freeze", "full"):
        assert f'<option value="{method}"' in page
    for objective in get_args(Objective):
        assert f'<option value="{objective}"' in page
    for preset in ("tiny", "small", "base"):
        assert f'<option value="{preset}">' in page
    # Every hyperparameter has its input, in its group, with the field's description as help.
    for name, field in Hyperparameters.model_fields.items():
        assert f'data-hp="{name}"' in page, name
        assert field.description and field.description.split(":")[0] in page, name
    assert 'id="hp-group-freeze"' in page and 'data-method="lora qlora"' in page
    assert 'id="job-tokenizer-model"' in page
    assert 'id="hp-group-kto" data-kind="finetune" data-objective="kto"' in page


def test_job_page_renders_metric_panels_container(client: TestClient) -> None:
    upload = client.post(
        "/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))}
    )
    job = client.post(
        "/api/jobs", json={"kind": "pretrain", "architecture": "tiny", "dataset_id": upload.json()["id"]}
    ).json()
    res = client.get(f"/jobs/{job['id']}")
    assert res.status_code == 200
    assert 'id="metric-panels"' in res.text and 'id="loss-chart"' in res.text


def test_workers_page_lists_registered_workers(client: TestClient) -> None:
    from backend.db import Worker, session_scope, utcnow

    assert "No workers connected" in client.get("/workers").text
    with session_scope() as s:
        s.add(Worker(name="w1@host", hostname="host", queue="studio", device="cpu", last_seen_at=utcnow()))
    page = client.get("/workers").text
    assert 'data-worker="w1@host"' in page and 'data-live="true"' in page
