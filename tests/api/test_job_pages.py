"""The new-job form renders its methods, objectives and their settings from the registry, and the hyperparameters from
their schema; the job page's Export panel follows the job's method."""

import io
import json
import re
from pathlib import Path

from fastapi.testclient import TestClient

from backend.db import Job, session_scope
from backend.job.schemas import Hyperparameters
from backend.method import registry
from backend.worker.service import alias

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_new_job_form_lists_methods_objectives_and_every_setting(client: TestClient) -> None:
    res = client.get("/jobs/new")
    assert res.status_code == 200
    page = res.text
    for preset in ("tiny", "small", "base"):
        assert f'<option value="{preset}">' in page
    # Every hyperparameter has its input, with the field's description as help.
    for name, field in Hyperparameters.model_fields.items():
        assert f'data-hp="{name}"' in page, name
        assert field.description and field.description.split(":")[0] in page, name
    assert 'id="job-tokenizer-model"' in page
    # Method and objective settings live in their own groups, not among the hyperparameters.
    assert 'id="hp-lora_r"' not in page and 'id="hp-dpo_beta"' not in page
    assert 'id="mc-group-lora" data-kind="finetune" data-method="lora"' in page
    assert 'id="oc-group-kto" data-kind="finetune" data-objective="kto"' in page
    # The script's copy of the registry (what it disables and picks) is the registry's own catalog.
    block = re.search(r'<script type="application/json" id="studio-methods">(.*?)</script>', page)
    assert block and json.loads(block.group(1)) == registry.catalog()


def _job_with_method(client: TestClient, method: str) -> int:
    upload = client.post(
        "/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))}
    )
    job = client.post(
        "/api/jobs", json={"kind": "pretrain", "architecture": "tiny", "dataset_id": upload.json()["id"]}
    ).json()
    with session_scope() as s:  # the export panel reads only the method; no base model is needed to show it
        stored = s.get(Job, job["id"])
        assert stored is not None
        stored.kind, stored.method = "finetune", method
    return int(job["id"])


def test_export_panel_of_a_method_that_cannot_merge_says_why(client: TestClient) -> None:
    page = client.get(f"/jobs/{_job_with_method(client, 'prompt_tuning')}").text
    assert re.search(r'<option value="merged" disabled title="[^"]+">Merged into the base model', page)
    assert '<option value="adapter" selected>Prompt tuning adapter only</option>' in page
    note = registry.METHODS["prompt_tuning"].merge_note
    assert f'id="export-merge-note">Merging into the base model is not offered: {note}.</p>' in page
    assert "the Prompt tuning adapter as it is, in the precision" in page


def test_export_panel_of_a_mergeable_adapter_offers_the_merge(client: TestClient) -> None:
    page = client.get(f"/jobs/{_job_with_method(client, 'ia3')}").text
    assert '<option value="merged">Merged into the base model</option>' in page
    assert '<option value="adapter">IA³ adapter only</option>' in page
    assert "export-merge-note" not in page
    assert "the IA³ adapter as it is, or merged into its base" in page


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
    assert f'data-worker="{alias("w1@host", "studio")}"' in page and 'data-live="true"' in page
