"""The OpenAPI walk: every operation in `app.openapi()`, generated from the schema, so a new route is covered
the day it is added. Without credentials each non-public operation answers 401; with user B's token, each
operation that names an object by id in its path answers 404 for user A's real object (a row of every kind,
written directly where training would be needed). Each test lists every operation that answers otherwise."""

import io
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.auth.service import issue_token
from backend.dataset.analysis import params_key
from backend.db import DatasetAnalysis, Export, Generation, Job, Model, Token, Upload, User, session_scope
from tests.support import password_hash

# Open to anyone, on purpose: liveness, logging in and out, and the schema itself.
PUBLIC = {
    ("GET", "/api/health"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/logout"),
}
# Administrators' routes: for a non-admin they are refused as a whole (403), whose id it names or not.
ADMIN_ONLY = ("/api/users", "/api/security")
METHODS = ("get", "post", "put", "patch", "delete")
HEADERS = {"content-range": "bytes 0-0/1"}  # required headers, with a value that parses


@dataclass
class Objects:
    """User A's objects, by the name of the path parameter that names them."""

    ids: dict[str, str]


def operations(app: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) for every operation the app documents."""
    paths = app.openapi()["paths"]
    return [(m.upper(), p, op) for p, ops in paths.items() for m, op in ops.items() if m in METHODS]


def example(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """The smallest value that `schema` accepts, well enough for the route to reach its ownership check."""
    if "$ref" in schema:
        return example(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            return example(options[0], components) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example(props[k], components) for k in schema.get("required", []) if k in props}
    if kind == "array":
        return []
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return max(1, schema.get("minimum", 1))
    if kind == "boolean":
        return False
    return None


def request_for(op: dict[str, Any], path: str, ids: dict[str, str], components: dict[str, Any]) -> dict[str, Any]:
    """The path filled with `ids`, the required query parameters and a minimal body: a request that passes
    validation, so only the authentication and ownership checks decide the answer."""
    url = path
    params: dict[str, Any] = {}
    headers: dict[str, str] = {}
    for p in op.get("parameters", []):
        if p["in"] == "path":
            url = url.replace("{" + p["name"] + "}", ids.get(p["name"], "1"))
        elif p["in"] == "query" and p.get("required"):
            params[p["name"]] = example(p.get("schema", {}), components)
        elif p["in"] == "header" and p.get("required"):
            headers[p["name"]] = HEADERS.get(p["name"].lower(), "x")
    kwargs: dict[str, Any] = {"params": params, "headers": headers}
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        kwargs["json"] = example(content["application/json"].get("schema", {}), components)
    elif "multipart/form-data" in content:
        kwargs["files"] = {"file": ("x.jsonl", io.BytesIO(b'{"text": "x"}\n'))}
    elif content:  # a raw body
        kwargs["content"] = b"x"
    return {"url": url, **kwargs}


def _user(email: str) -> tuple[int, str]:
    with session_scope() as s:
        user = User(email=email, password_hash=password_hash("password123"), is_admin=False)
        s.add(user)
        s.flush()
        return user.id, issue_token(s, user=user, kind="api", name="walk")


@pytest.fixture
def objects(client: TestClient) -> Objects:
    """One object of every kind owned by A (the `client` fixture's user): the dataset through the API, the rest as
    rows, as training, an import or a worker would have left them."""
    data = b'{"prompt": "Capital of France?", "completion": "Paris"}\n'
    res = client.post("/api/datasets", files={"file": ("a.jsonl", io.BytesIO(data))})
    assert res.status_code == 201, res.text
    dataset_id = res.json()["id"]
    owner_id = client.get("/api/me").json()["id"]
    with session_scope() as s:
        model = Model(owner_id=owner_id, name="a-model", source="upload", path="/nonexistent")
        s.add(model)
        s.flush()
        job = Job(
            owner_id=owner_id, name="a-job", kind="finetune", status="succeeded", method="lora", objective="sft",
            dataset_id=dataset_id, base_model_id=model.id, hyperparameters={},
        )  # fmt: skip
        s.add(job)
        s.flush()
        export = Export(job_id=job.id, owner_id=owner_id, format="adapter")
        generation = Generation(owner_id=owner_id, model_id=model.id, prompt="hi")
        params = {"validation_dataset_id": None, "threshold": 0.8}
        analysis = DatasetAnalysis(dataset_id=dataset_id, kind="hygiene", key=params_key(params), params=params)
        upload = Upload(id=uuid.uuid4().hex, owner_id=owner_id, filename="a.jsonl", size_bytes=10)
        s.add_all([export, generation, analysis, upload])
        s.flush()
        token_id = s.scalar(select(Token.id).where(Token.user_id == owner_id))
        ids = {
            "dataset_id": dataset_id, "model_id": model.id, "job_id": job.id, "export_id": export.id,
            "generation_id": generation.id, "analysis_id": analysis.id, "upload_id": upload.id,
            "token_id": token_id, "user_id": owner_id, "name": "adapter",
            # The OpenAI-compatible API's ids of the same objects (backend/openai_compat/ids.py).
            "file_id": f"file-{dataset_id}", "fine_tuning_job_id": f"ftjob-{job.id}",
            "model": f"studio-model-{model.id}",
        }  # fmt: skip
    return Objects(ids={k: str(v) for k, v in ids.items()})


def answers(client: TestClient, method: str, request: dict[str, Any]) -> int:
    return client.request(method, **request).status_code


def test_every_non_public_operation_needs_credentials(client: TestClient, objects: Objects) -> None:
    ops = operations(client.app)
    components = client.app.openapi().get("components", {}).get("schemas", {})  # type: ignore[attr-defined]
    assert {(m, p) for m, p, _ in ops} >= PUBLIC, "a public route listed here is gone: update PUBLIC"
    token = client.headers.pop("Authorization")
    try:
        wrong = {
            f"{m} {p}": status
            for m, p, op in ops
            if (m, p) not in PUBLIC
            and (status := answers(client, m, request_for(op, p, objects.ids, components))) != 401
        }
    finally:
        client.headers["Authorization"] = token
    assert not wrong, f"answered without credentials (want 401): {wrong}"
    assert len(ops) - len(PUBLIC) >= 60  # the walk saw the routes (58 when issue 13 was filed, more since)


def test_another_users_objects_are_not_found(client: TestClient, objects: Objects) -> None:
    ops = [(m, p, op) for m, p, op in operations(client.app) if "{" in p]
    components = client.app.openapi().get("components", {}).get("schemas", {})  # type: ignore[attr-defined]
    named = {part[1:-1] for _, p, _ in ops for part in p.split("/") if part.startswith("{")}
    assert named <= set(objects.ids), f"a path names an object this test does not create: {named - set(objects.ids)}"
    _, bob = _user("bob@example.com")
    bob_headers = {"Authorization": f"Bearer {bob}"}
    wrong: dict[str, tuple[int, str]] = {}
    for method, path, op in ops:
        request = request_for(op, path, objects.ids, components)
        request["headers"].update(bob_headers)
        res = client.request(method, **request)
        allowed = (403, 404) if path.startswith(ADMIN_ONLY) else (404,)
        if res.status_code not in allowed:
            wrong[f"{method} {path}"] = (res.status_code, res.text[:200])
    assert not wrong, "answered user B about user A's objects (want 404):\n" + json.dumps(wrong, indent=1)
    # A's objects are all still there: B's requests changed nothing.
    for path in ("/api/datasets/{dataset_id}", "/api/jobs/{job_id}", "/api/models/{model_id}"):
        url = path.format(**objects.ids)
        assert client.get(url).status_code == 200, url
