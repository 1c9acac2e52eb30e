"""Unpaired preference data (answers each marked desirable or not) and no column dropped silently.

OpenAI messages (or ShareGPT, or prompt/completion) with a boolean `label` are read as shape unpaired_preference
and train with objective kto; a column the chosen layout does not read is named in a warning stored with the
dataset, with the mapping that would use it."""

import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.db import Model, User, session_scope


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def chat(question: str, answer: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, **extra}


# 5 desirable and 3 undesirable answers, each with an id nothing trains on.
KTO_RECORDS = [chat(f"Say hi {i}", "Hello!", label=True, id=i) for i in range(5)] + [
    chat(f"Say hi {i}", "Go away.", label=False, id=10 + i) for i in range(3)
]


def upload(client: TestClient, content: bytes, name: str = "kto.jsonl", options: dict[str, Any] | None = None) -> Any:
    data = {"options": json.dumps(options)} if options else {}
    return client.post("/api/datasets", files={"file": (name, io.BytesIO(content))}, data=data)


def warning(body: dict[str, Any], code: str, field: str | None) -> str:
    found = [w["message"] for w in body["warnings"] if w["code"] == code and w["field"] == field]
    assert len(found) == 1, body["warnings"]
    return found[0]


@pytest.fixture
def base_model(client: TestClient) -> int:
    with session_scope() as s:
        owner = s.query(User).one()
        s.add(Model(owner_id=owner.id, name="base", source="local", path="/nowhere", shared=True))
    return int(client.get("/api/models").json()["items"][0]["id"])


def test_messages_with_a_boolean_label_are_unpaired_preference(client: TestClient) -> None:
    res = upload(client, jsonl(KTO_RECORDS))
    assert res.status_code == 201, res.text
    dataset = res.json()
    assert (dataset["layout"], dataset["shape"], dataset["record_count"]) == (
        "openai_unpaired",
        "unpaired_preference",
        8,
    )
    # The label is read, not dropped; the id is named as harmless metadata.
    assert warning(dataset, "ignored_columns", None) == "not trained on (metadata, harmless): id"
    assert not [w for w in dataset["warnings"] if w["code"] == "unused_column"]
    rows = client.get(f"/api/datasets/{dataset['id']}/preview").json()["rows"]
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "Say hi 0"}],
        "completion": [{"role": "assistant", "content": "Hello!"}],
        "label": True,
    }
    assert [r["label"] for r in rows] == [True] * 5 + [False] * 3
    # Stored with the dataset: the page shows the same warnings.
    assert client.get(f"/api/datasets/{dataset['id']}").json()["warnings"] == dataset["warnings"]
    page = client.get(f"/datasets/{dataset['id']}")
    assert page.status_code == 200 and "not trained on (metadata, harmless): id" in page.text


@pytest.mark.parametrize(
    ("records", "label"),
    [
        ([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}], "label": 0}], False),
        ([{"prompt": "Hi", "completion": "Hey", "label": "true"}], True),
        ([{"prompt": "Hi", "completion": "Hey", "label": " FALSE "}], False),
        ([{"prompt": "Hi", "completion": "Hey", "label": 1}], True),
    ],
)
def test_sharegpt_and_prompt_completion_labels_in_their_usual_spellings(
    client: TestClient, records: list[dict[str, Any]], label: bool
) -> None:
    res = client.post("/api/datasets/inspect", files={"file": ("u.jsonl", io.BytesIO(jsonl(records)))})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["shape"] == "unpaired_preference" and body["error_count"] == 0, body
    assert body["preview"][0]["label"] is label
    counts = "1 desirable, 0 undesirable" if label else "0 desirable, 1 undesirable"
    assert body["notes"] == [f"read as unpaired preference (objective kto): {counts} answers"]


def test_a_label_that_is_not_true_or_false_names_its_line_and_field(client: TestClient) -> None:
    records = [chat("Hi", "Hello", label=True), chat("Hi", "Bye", label="maybe"), chat("Hi", "Hey", label=2)]
    res = upload(client, jsonl(records))
    assert res.status_code == 422, res.text
    errors = res.json()["errors"]
    assert [(e["line"], e["field"]) for e in errors] == [(2, "label"), (3, "label")]
    assert "expected true or false (or 1/0)" in errors[0]["message"] and "'maybe'" in errors[0]["message"]
    # Text with class labels stays classification.
    labelled = client.post(
        "/api/datasets/inspect", files={"file": ("t.jsonl", io.BytesIO(jsonl([{"text": "a", "label": "pos"}])))}
    )
    assert labelled.json()["shape"] == "classification"


def test_a_conversation_must_end_with_the_rated_answer(client: TestClient) -> None:
    records = [chat("Hi", "Hello", label=True), {"messages": [{"role": "user", "content": "Hi"}], "label": False}]
    res = upload(client, jsonl(records))
    assert res.status_code == 422, res.text
    (error,) = res.json()["errors"]
    assert (error["line"], error["field"]) == (2, "messages[0].role") and "assistant turn" in error["message"]


def test_a_label_the_chosen_shape_does_not_read_is_named_with_the_kto_suggestion(client: TestClient) -> None:
    res = upload(client, jsonl(KTO_RECORDS), options={"shape": "messages"})
    assert res.status_code == 201, res.text
    dataset = res.json()
    assert (dataset["layout"], dataset["shape"]) == ("openai", "messages")
    message = warning(dataset, "unused_column", "label")
    assert message.startswith("column 'label' is not read by layout openai (8 of 8 records)")
    assert "unpaired preference" in message and "undesirable answers would be trained as targets" in message
    assert "objective kto" in message
    # Shown first, before any per-record warning, and on the page.
    assert dataset["warnings"][0]["code"] == "ignored_columns" and dataset["warnings"][1]["field"] == "label"
    assert "objective kto" in client.get(f"/datasets/{dataset['id']}").text


def test_an_unread_response_column_suggests_the_mapping(client: TestClient) -> None:
    records = [{"prompt": "Hi", "completion": "Hey", "response": "Hello there", "source": "web", "notes": "x"}]
    res = client.post("/api/datasets/inspect", files={"file": ("pc.jsonl", io.BytesIO(jsonl(records)))})
    body = res.json()
    assert body["shape"] == "prompt_completion"
    suggestion = warning(body, "unused_column", "response")
    assert 'options.columns {"completion": "response"}' in suggestion
    assert "in place of the current 'completion'" in suggestion
    assert warning(body, "ignored_columns", None) == "not trained on (metadata, harmless): source"
    assert "map it onto a field with options.columns" in warning(body, "unused_column", "notes")
    # A mapped column is read; the one it replaced is named instead.
    mapped = client.post(
        "/api/datasets/inspect",
        files={"file": ("pc.jsonl", io.BytesIO(jsonl(records)))},
        data={"options": json.dumps({"columns": {"completion": "response"}})},
    ).json()
    assert mapped["preview"][0]["completion"] == "Hello there"
    assert [w["field"] for w in mapped["warnings"] if w["code"] == "unused_column"] == ["notes"]


def test_records_no_layout_reads_get_a_mapping_hint(client: TestClient) -> None:
    records = [{"question": "Hi?", "answer": "Hey"}]
    res = upload(client, jsonl(records))
    assert res.status_code == 422, res.text
    assert 'e.g. {"completion": "answer", "prompt": "question"}' in res.json()["errors"][0]["message"]


def test_kto_is_the_default_objective_for_unpaired_preference(client: TestClient, base_model: int) -> None:
    dataset_id = upload(client, jsonl(KTO_RECORDS)).json()["id"]
    hp = {"kto_beta": 0.2, "kto_desirable_weight": 0.6}
    res = client.post(
        "/api/jobs",
        json={"kind": "finetune", "dataset_id": dataset_id, "base_model": base_model, "hyperparameters": hp},
    )
    assert res.status_code == 201, res.text
    job = res.json()
    assert job["objective"] == "kto"
    # Old flat keys land in the objective's own settings (the objective came from the data).
    assert job["objective_config"] == {"beta": 0.2, "desirable_weight": 0.6, "undesirable_weight": 1.0}
    explicit = {"kind": "finetune", "dataset_id": dataset_id, "base_model": base_model, "objective": "kto"}
    assert client.post("/api/jobs", json=explicit).status_code == 201


def test_kto_needs_unpaired_data_and_two_records_a_batch(client: TestClient, base_model: int) -> None:
    pairs = jsonl([{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}])
    dataset_id = upload(client, pairs, "pairs.jsonl").json()["id"]
    job = {"kind": "finetune", "dataset_id": dataset_id, "base_model": base_model, "objective": "kto"}
    res = client.post("/api/jobs", json=job)
    assert res.status_code == 422, res.text
    assert res.json()["field"] == "objective"
    assert "objective kto needs unpaired_preference records" in res.json()["detail"]
    # Nor does the unpaired data train with another objective.
    unpaired = upload(client, jsonl(KTO_RECORDS)).json()["id"]
    res = client.post("/api/jobs", json={**job, "dataset_id": unpaired, "objective": "dpo"})
    assert res.status_code == 422 and res.json()["field"] == "objective"
    # KTO's KL estimate pairs each prompt with another answer of its batch: one record a batch is refused,
    # whether kto was asked for or came from the data.
    for body in ({**job, "dataset_id": unpaired}, {**job, "dataset_id": unpaired, "objective": None}):
        res = client.post("/api/jobs", json={**body, "hyperparameters": {"batch_size": 1}})
        assert res.status_code == 422, res.text
        assert "batch_size" in res.text and "at least 2" in res.text
    assert client.get("/api/jobs").json()["items"] == []


def test_a_category_label_on_prompt_completion_is_not_taken_for_a_flag(client: TestClient) -> None:
    records = [
        {"prompt": "2+2?", "completion": "4", "label": "math"},
        {"prompt": "A rhyme?", "completion": "Moon, June", "label": "poetry"},
    ]
    res = upload(client, jsonl(records))
    assert res.status_code == 422, res.text
    assert "set options.shape to messages or prompt_completion" in res.json()["errors"][0]["message"]
    res = upload(client, jsonl(records), options={"shape": "prompt_completion"})
    assert res.status_code == 201, res.text
    message = warning(res.json(), "unused_column", "label")
    assert "not all true/false" in message and "kto" not in message
