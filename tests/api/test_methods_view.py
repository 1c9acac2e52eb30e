"""The Methods view: the compare endpoint's per-run costs and results (trainable share, peak memory, throughput,
final accuracy, output size), and the /methods page's form rendered from the method registry."""

import io
import re
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from backend.db import Artifact, Job, JobMetric, session_scope, utcnow
from backend.method import registry
from tests.api.test_compare import _job

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _dataset(client: TestClient) -> int:
    res = client.post("/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))})
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


def _record(job_id: int, *, method: str, trainable: int, accuracy_key: str | None, artifacts: dict[str, int]) -> None:
    """What a fine-tune's worker leaves behind: parameters, four training points 2 s apart (peak memory rising),
    an evaluation at the end, and its output files."""
    start = utcnow()
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.kind, job.method = "finetune", method  # as if launched on a base: the output follows the method
        job.resolved_config = {"parameters": {"trainable": trainable, "total": 1_000_000}}
        job.status, job.current_step, job.total_steps = "succeeded", 4, 4
        job.final_eval_loss = 2.5
        for step in range(1, 5):
            values = {"loss": 3.0 - step / 10, "tokens_seen": 1000.0 * step, "peak_memory_bytes": 1_000_000 * step}
            s.add(JobMetric(job_id=job_id, step=step, values=values, created_at=start + timedelta(seconds=2 * step)))
        evaluation = {"eval_loss": 2.5, **({accuracy_key: 0.75} if accuracy_key else {})}
        s.add(JobMetric(job_id=job_id, step=4, values=evaluation, created_at=start + timedelta(seconds=8)))
        for name, size in artifacts.items():
            s.add(
                Artifact(
                    job_id=job_id, owner_id=job.owner_id, name=name, path=f"/x/{name}", size_bytes=size, sha256="0" * 64
                )
            )


def test_compare_reports_each_methods_costs_and_results(client: TestClient) -> None:
    dataset_id = _dataset(client)
    lora, full, fresh = (_job(client, dataset_id, max_steps=4) for _ in range(3))
    # A LoRA run's output is its adapter (the merged copy beside it is not what it trained); a full run's, model.zip.
    _record(lora, method="lora", trainable=4_200, accuracy_key="eval_token_accuracy",
            artifacts={"adapter.zip": 12_345, "merged.zip": 9_999_999})  # fmt: skip
    _record(full, method="full", trainable=1_000_000, accuracy_key=None, artifacts={"model.zip": 4_000_000})

    res = client.get("/api/jobs/compare", params={"ids": [lora, full, fresh]})
    assert res.status_code == 200, res.text
    run_lora, run_full, run_fresh = res.json()["runs"]
    # A PEFT model's total holds its adapter: the share is of the base's own parameters.
    assert run_lora["trainable_fraction"] == 4_200 / (1_000_000 - 4_200) and run_full["trainable_fraction"] == 1.0
    assert run_lora["peak_memory_bytes"] == 4_000_000  # the last training point's, not the first's
    # 4000 tokens over the 6 s from the first point (step 1 at 2 s) to the evaluation at 8 s.
    assert run_lora["seconds"] == 6.0 and run_lora["tokens_per_second"] == 4000 / 6
    assert run_lora["final_eval_accuracy"] == 0.75 and run_full["final_eval_accuracy"] is None
    assert run_lora["artifact_bytes"] == 12_345 and run_full["artifact_bytes"] == 4_000_000
    assert run_lora["total_steps"] == 4 and run_lora["final_eval_loss"] == 2.5
    # A run nothing has logged for yet: every figure is absent, none is made up.
    for key in (
        "trainable_fraction",
        "peak_memory_bytes",
        "tokens_per_second",
        "final_eval_accuracy",
        "artifact_bytes",
    ):
        assert run_fresh[key] is None, key


def test_classification_accuracy_is_the_final_accuracy(client: TestClient) -> None:
    job_id = _job(client, _dataset(client))
    _record(job_id, method="ia3", trainable=100, accuracy_key="eval_accuracy", artifacts={})
    run = client.get("/api/jobs/compare", params={"ids": [job_id]}).json()["runs"][0]
    assert run["final_eval_accuracy"] == 0.75 and run["artifact_bytes"] is None  # no adapter.zip written yet


def test_methods_page_renders_a_checkbox_per_finetune_method(client: TestClient) -> None:
    dataset_id = _dataset(client)
    page = client.get("/methods")
    assert page.status_code == 200, page.text
    boxes = re.findall(r'<input type="checkbox" name="method" value="([a-z_0-9]+)"', page.text)
    assert boxes == [m.name for m in registry.METHODS.values() if "finetune" in m.kinds]
    # No CUDA worker is live here: QLoRA is offered but off, with the reason beside it.
    assert re.search(r'value="qlora"[^>]*data-unavailable="needs a CUDA worker[^"]*" disabled', page.text)
    assert 'id="methods-reason-qlora">— needs a CUDA worker with bitsandbytes' in page.text
    assert 'data-objectives="sft causal_lm"' in page.text  # prompt tuning: the page disables it for other data
    assert f'<option value="{dataset_id}" data-objective="causal_lm"' in page.text
    assert 'id="methods-max_length" name="max_length" value="256"' in page.text  # Hyperparameters' default
    assert '"share_range": [0.1, 1.0]' in page.text  # the numbers the claim is checked against
    assert 'id="methods-results"' not in page.text  # no runs asked for: the form only


def test_methods_results_view_takes_the_runs_in_its_address(client: TestClient) -> None:
    dataset_id = _dataset(client)
    a, b = _job(client, dataset_id, max_steps=4), _job(client, dataset_id, max_steps=4)
    page = client.get("/methods", params={"ids": f"{a},{b},{a}"})
    assert page.status_code == 200 and 'id="methods-results"' in page.text
    assert f'<script type="application/json" id="methods-ids">[{a}, {b}]</script>' in page.text
    assert f'href="/compare?ids={a}&amp;ids={b}"' in page.text
    assert client.get("/methods", params={"ids": "1,abc"}).status_code == 422
    assert client.get("/methods", params={"ids": ",".join(str(a) for _ in range(9))}).status_code == 200  # repeats
    too_many = client.get("/methods", params={"ids": ",".join(str(i) for i in range(1, 10))})
    assert too_many.status_code == 422 and "at most 8 runs" in too_many.text
    assert client.get("/methods", params={"ids": "999999"}).status_code == 404


def test_methods_page_needs_a_login(client: TestClient) -> None:
    del client.headers["Authorization"]
    res = client.get("/methods", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/login?next=/methods"
