"""Schemathesis against the in-process app, with a bearer token: a few examples of every operation, generated
from the OpenAPI schema with a fixed seed (derandomized, so a run repeats the last one), and no answer may be a
5xx. The streams are left out (an SSE response never ends); so is what ends the test's own credentials
(logging out, revoking a token), which runs last instead, once, so the rest is exercised logged in."""

import io
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from backend.db import Job, Model, session_scope

EXAMPLES = 4  # per operation: enough to cross each one's validation paths, few enough for the default run
STREAMS = r".*/stream$"
LAST = {("POST", "/api/auth/logout"), ("DELETE", "/api/tokens/{token_id}")}


def _errors(operation: Any, headers: dict[str, str], ids: dict[str, int] | None = None) -> list[str]:
    """The 5xx answers among EXAMPLES generated requests to `operation`, with the path's ids generated too or
    taken from `ids` (empty when there were none)."""
    found: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, quickly
    )
    @given(case=operation.as_strategy(path_parameters=ids))
    def run(case: Any) -> None:
        asked = f"{operation.label} with {case.path_parameters} {case.query} {case.body!r:.200}"
        # Keep going after a failure: one report lists every operation that failed.
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # the in-process client re-raises what the app did not handle: a 500
            found.append(f"{asked}: raised {exc!r}")
            return
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except AssertionError as exc:
            found.append(f"{asked}: {response.status_code}: {exc}")

    run()
    return found


def _objects(client: TestClient) -> dict[str, int]:
    """A dataset, a model and a finished job of the test's user (rows where training would be needed), so the
    routes that name one get past "not found" and into their own validation."""
    data = b'{"prompt": "Capital of France?", "completion": "Paris"}\n{"prompt": "2+2?", "completion": "4"}\n'
    res = client.post("/api/datasets", files={"file": ("a.jsonl", io.BytesIO(data))})
    assert res.status_code == 201, res.text
    owner_id = client.get("/api/me").json()["id"]
    with session_scope() as s:
        model = Model(owner_id=owner_id, name="base", source="local", path="/nowhere")
        s.add(model)
        s.flush()
        job = Job(
            owner_id=owner_id, name="done", kind="finetune", status="succeeded", method="lora", objective="sft",
            dataset_id=res.json()["id"], base_model_id=model.id, hyperparameters={},
        )  # fmt: skip
        s.add(job)
        s.flush()
        return {"dataset_id": res.json()["id"], "model_id": model.id, "job_id": job.id}


def test_no_operation_answers_a_server_error(client: TestClient) -> None:
    ids = _objects(client)
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app).exclude(path_regex=STREAMS)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: (op.method.upper(), op.path) in LAST)
    assert len(operations) >= 60, [op.label for op in operations]  # the walk reached the API, not just a few routes
    headers = {"Authorization": str(client.headers["Authorization"])}
    errors = []
    for operation in operations:
        errors += _errors(operation, headers)
        named = {p.name for p in operation.path_parameters}
        if named and named <= set(ids):  # and again on the user's own objects
            errors += _errors(operation, headers, {k: v for k, v in ids.items() if k in named})
    assert not errors, "\n".join(errors)
