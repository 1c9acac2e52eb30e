"""A finetune job's objective: from the dataset's shape when not given (preference → dpo, labelled text →
classification); one that the data cannot train is a 422 naming the objective."""

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.db import Model, User, session_scope

FIXTURES = Path(__file__).parent.parent / "fixtures"


def upload(client: TestClient, path: Path) -> int:
    res = client.post("/api/datasets", files={"file": (path.name, io.BytesIO(path.read_bytes()))})
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


@pytest.fixture
def base_model(client: TestClient) -> int:
    with session_scope() as s:
        owner = s.query(User).one()
        s.add(Model(owner_id=owner.id, name="base", source="local", path="/nowhere", shared=True))
    return int(client.get("/api/models").json()["items"][0]["id"])


def finetune(dataset_id: int, base_model: int, **fields: object) -> dict[str, object]:
    return {"kind": "finetune", "dataset_id": dataset_id, "base_model": base_model, **fields}


@pytest.mark.parametrize(
    ("fixture", "shape", "objective"),
    [
        ("formats/preference.jsonl", "preference", "dpo"),
        ("formats/preference_messages.jsonl", "preference", "dpo"),
        ("formats/text_label.csv", "classification", "classification"),
        ("formats/sst2.tsv", "classification", "classification"),
    ],
)
def test_the_objective_defaults_from_the_dataset_shape(
    client: TestClient, base_model: int, fixture: str, shape: str, objective: str
) -> None:
    dataset_id = upload(client, FIXTURES / fixture)
    assert client.get(f"/api/datasets/{dataset_id}").json()["shape"] == shape
    res = client.post("/api/jobs", json=finetune(dataset_id, base_model, method_config={"r": 4}))
    assert res.status_code == 201, res.text
    job = res.json()
    assert (job["objective"], job["method"]) == (objective, "lora")
    assert job["method_config"]["r"] == 4
    # The objective's own settings, defaults filled in: DPO's beta; classification has none.
    assert job["objective_config"] == ({"beta": 0.1} if objective == "dpo" else {})


@pytest.mark.parametrize(
    ("fixture", "objective", "wanted"),
    [
        ("tiny.txt", "dpo", "preference"),
        ("formats/text_label.csv", "dpo", "preference"),
        ("tiny.txt", "classification", "classification"),
        ("formats/preference.jsonl", "classification", "classification"),
    ],
)
def test_an_objective_the_data_cannot_train_is_a_422(
    client: TestClient, base_model: int, fixture: str, objective: str, wanted: str
) -> None:
    dataset_id = upload(client, FIXTURES / fixture)
    res = client.post("/api/jobs", json=finetune(dataset_id, base_model, objective=objective))
    assert res.status_code == 422, res.text
    body = res.json()
    assert body["field"] == "objective"
    assert f"objective {objective} needs {wanted} records" in body["detail"]
    assert client.get("/api/jobs").json()["items"] == []


def test_dpo_beta_out_of_bounds_names_the_field(client: TestClient, base_model: int) -> None:
    dataset_id = upload(client, FIXTURES / "formats/preference.jsonl")
    # The objective's own settings, and the old flat key that API scripts may still send: the same refusal.
    for body in ({"objective_config": {"beta": 0}}, {"hyperparameters": {"dpo_beta": 0}}):
        res = client.post("/api/jobs", json=finetune(dataset_id, base_model, **body))
        assert res.status_code == 422, res.text
        assert res.json()["field"] == "objective_config.beta"
        assert "greater than 0" in res.json()["detail"]
