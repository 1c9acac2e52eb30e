"""Dataset analyses over HTTP: parameters validated (422 naming the field), one cached row per parameters,
the render's wait, hygiene and "apply fixes" making the next version. The worker step runs in-process."""

import io
import itertools
import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.db import DatasetAnalysis, Model, User, session_scope, utcnow
from backend.queue import ANALYZE_DATASET
from tests.workers.tokenizers import plain_tokenizer
from workers.analysis.tasks import analyze_dataset

PAIRS = [
    {"prompt": "Capital of France?", "completion": "Paris"},
    {"prompt": "Capital of Spain?", "completion": "Madrid"},
    {"prompt": "Capital of  France?", "completion": "Lyon"},  # conflicts with record 0 (spacing does not count)
    {"prompt": "Capital of Spain?", "completion": "Madrid"},  # exact duplicate of record 1
    {"prompt": "Name a colour.", "completion": "Blue"},
]


def upload(client: TestClient, name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    res = client.post("/api/datasets", files={"file": (name, io.BytesIO(body))})
    assert res.status_code == 201, res.text
    return dict(res.json())


@pytest.fixture
def base_model(client: TestClient, tmp_path: Path) -> int:
    """A base model of the test user: only its tokenizer is read by the analyses."""
    directory = tmp_path / "base"
    plain_tokenizer().save_pretrained(directory)
    with session_scope() as s:
        user = s.scalars(select(User).where(User.email == "owner@example.com")).one()
        model = Model(owner_id=user.id, name="tok", source="local", path=str(directory))
        s.add(model)
        s.flush()
        return model.id


@pytest.fixture
def pairs(client: TestClient) -> dict[str, Any]:
    return upload(client, "pairs.jsonl", PAIRS)


def compute_queued(kind: str) -> None:
    """What the analysis worker does with every queued row of `kind`."""
    with session_scope() as s:
        ids = list(s.scalars(select(DatasetAnalysis.id).where(DatasetAnalysis.kind == kind)))
    for analysis_id in ids:
        analyze_dataset(analysis_id)


def test_stats_are_created_once_and_served_when_done(client: TestClient, pairs: dict, base_model: int) -> None:
    url = f"/api/datasets/{pairs['id']}/stats?base_model={base_model}&max_length=64&batch_size=2"
    # A GET only reads: nothing is queued until someone POSTs the settings.
    unasked = client.get(url)
    assert unasked.status_code == 404 and "POST to compute them" in unasked.json()["detail"], unasked.text
    first = client.post(url)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "id": first.json()["id"],
        "status": "queued",
        "result": None,
        "error": None,
        "progress": None,
    }
    assert client.post(url).json()["id"] == first.json()["id"]  # the same parameters, the same row
    assert client.get(url).json() == first.json()
    compute_queued("stats")
    done = client.get(url).json()
    assert done["status"] == "done" and done["error"] is None
    result = done["result"]
    assert (result["records"], result["objective"], result["steps_per_epoch"]) == (5, "sft", 3)
    assert result["supervised_tokens"] > 0 and len(result["histogram"]["counts"]) == 20
    # Other parameters are another analysis.
    other = url.replace("batch_size=2", "batch_size=4")
    assert client.get(other).status_code == 404
    assert client.post(other).json()["status"] == "queued"
    with session_scope() as s:
        assert len(s.scalars(select(DatasetAnalysis)).all()) == 2


BAD_PARAMETERS = [
    ("stats?base_model={m}&max_length=4", "max_length"),
    ("stats?base_model={m}&max_length=100000", "max_length"),
    ("stats?base_model={m}&batch_size=0", "batch_size"),
    ("stats?base_model=999", "base_model"),
    ("stats?base_model=abc", "base_model"),
    ("stats", "base_model"),
    ("stats?base_model={m}&objective=dpo", "objective"),
    ("render?base_model={m}&index=5", "index"),
    ("render?base_model={m}&index=-1", "index"),
    ("render?base_model={m}", "index"),
    ("render?base_model={m}&index=0&wait=99", "wait"),
    ("hygiene?threshold=0.1", "threshold"),
    ("hygiene?threshold=nan", "threshold"),
    ("hygiene?validation_dataset_id=999", "validation_dataset_id"),
    ("hygiene?validation_dataset_id={d}", "validation_dataset_id"),
]


def test_bad_parameters_name_the_field(client: TestClient, pairs: dict, base_model: int) -> None:
    for (path, field), method in itertools.product(BAD_PARAMETERS, ("POST", "GET")):
        if method == "GET" and field == "wait":
            continue  # reading waits for nothing
        res = client.request(method, f"/api/datasets/{pairs['id']}/" + path.format(m=base_model, d=pairs["id"]))
        assert res.status_code == 422, (method, path, res.text)
        body = res.json()
        named = body.get("field") or [err["loc"][-1] for err in body["detail"]]
        assert field in named, (method, path, body)
    with session_scope() as s:
        assert s.scalars(select(DatasetAnalysis)).all() == []


def test_sft_statistics_of_raw_text_are_refused(client: TestClient, base_model: int) -> None:
    text = upload(client, "notes.jsonl", [{"text": "one"}, {"text": "two"}])
    res = client.post(f"/api/datasets/{text['id']}/stats?base_model={base_model}&objective=sft")
    assert res.status_code == 422 and res.json()["field"] == "objective"
    ok = client.post(f"/api/datasets/{text['id']}/stats?base_model={base_model}")
    assert ok.status_code == 200  # causal_lm by default for text


def test_render_answers_202_while_queued_and_200_when_done(client: TestClient, pairs: dict, base_model: int) -> None:
    url = f"/api/datasets/{pairs['id']}/render?base_model={base_model}&max_length=64&index=2"
    assert client.get(url).status_code == 404
    pending = client.post(url + "&wait=0")
    assert pending.status_code == 202 and pending.json()["status"] == "queued"

    # The route polls the row while a worker computes it.
    worker = threading.Thread(target=lambda: (time.sleep(0.5), compute_queued("render")))
    worker.start()
    res = client.post(url + "&wait=10")
    worker.join()
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["status"] == "done"
    result = body["result"]
    assert set(result) >= {
        "index",
        "tokens",
        "total_tokens",
        "supervised_tokens",
        "truncated",
        "lost_supervised_tokens",
    }
    assert result["index"] == 2 and result["truncated"] is False and result["lost_supervised_tokens"] == 0
    assert set(result["tokens"][0]) == {"id", "text", "trained"}
    assert "".join(t["text"] for t in result["tokens"] if t["trained"]) == "Lyon<|endoftext|>"
    assert result["supervised_tokens"] == sum(t["trained"] for t in result["tokens"])
    assert client.get(url).json() == body  # once computed, a GET reads it


def test_hygiene_then_fixes_make_the_next_version(client: TestClient, pairs: dict) -> None:
    fixes = f"/api/datasets/{pairs['id']}/fixes"
    assert client.post(fixes, json={"drop_exact_duplicates": True}).status_code == 409  # no hygiene result yet
    assert client.get(f"/api/datasets/{pairs['id']}/hygiene").status_code == 404
    assert client.post(f"/api/datasets/{pairs['id']}/hygiene").json()["status"] == "queued"
    compute_queued("hygiene")
    hygiene = client.get(f"/api/datasets/{pairs['id']}/hygiene").json()
    assert hygiene["status"] == "done", hygiene
    result = hygiene["result"]
    assert result["exact_duplicates"] == [[1, 3]]
    assert [c["indices"] for c in result["conflicting_answers"]] == [[0, 2]]
    assert result["previews"]["3"] == "Capital of Spain? Madrid"

    assert client.post(fixes, json={}).status_code == 422
    assert client.post(fixes, json={"drop_everything": True}).status_code == 422
    res = client.post(fixes, json={"drop_exact_duplicates": True, "drop_conflicts": True})
    assert res.status_code == 201, res.text
    v2 = res.json()
    assert (v2["version"], v2["parent_id"], v2["record_count"], v2["shape"]) == (2, pairs["id"], 2, "prompt_completion")
    assert "dropped 1 exact duplicates" in v2["note"]
    rows = client.get(f"/api/datasets/{v2['id']}/preview").json()["rows"]
    assert [r["completion"] for r in rows] == ["Madrid", "Blue"]

    # The new version is clean: nothing left to drop.
    client.post(f"/api/datasets/{v2['id']}/hygiene")
    compute_queued("hygiene")
    assert client.post(f"/api/datasets/{v2['id']}/fixes", json={"drop_exact_duplicates": True}).status_code == 422


def test_leakage_against_a_validation_dataset(client: TestClient, pairs: dict) -> None:
    held_out = upload(client, "held.jsonl", [PAIRS[4], {"prompt": "Largest ocean?", "completion": "Pacific"}])
    url = f"/api/datasets/{pairs['id']}/hygiene?validation_dataset_id={held_out['id']}&threshold=0.9"
    client.post(url)
    compute_queued("hygiene")
    result = client.get(url).json()["result"]
    assert [(leak["validation_index"], leak["indices"]) for leak in result["leakage"]] == [(0, [4])]
    res = client.post(
        f"/api/datasets/{pairs['id']}/fixes",
        json={"drop_leaked": True, "validation_dataset_id": held_out["id"], "threshold": 0.9},
    )
    assert res.status_code == 201 and res.json()["record_count"] == 4


def test_analyses_of_another_users_dataset_are_not_found(client: TestClient, pairs: dict, base_model: int) -> None:
    from backend.auth.service import create_user, issue_token

    with session_scope() as s:
        other = create_user(s, email="other@example.com", password="password123", is_admin=False)
        token = issue_token(s, user=other, kind="api")
    headers = {"Authorization": f"Bearer {token}"}
    for path in (f"stats?base_model={base_model}", "hygiene", f"render?base_model={base_model}&index=0"):
        assert client.get(f"/api/datasets/{pairs['id']}/{path}", headers=headers).status_code == 404
    assert client.post(f"/api/datasets/{pairs['id']}/fixes", headers=headers, json={}).status_code == 404


class Broker:
    """A stand-in for the broker: refuses every message while `up` is False, else records the analyses sent."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[int] = []

    def send_task(self, name: str, args: list[int], queue: str) -> None:
        if not self.up:
            raise ConnectionError("broker unreachable")
        if name == ANALYZE_DATASET:
            self.sent.append(args[0])


def test_broker_down_leaves_the_row_queued_for_the_sweep(
    client: TestClient, pairs: dict, base_model: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.queue import ANALYSIS_QUEUE
    from backend.work import send
    from backend.work.reaper import sweep
    from tests.api.live_workers import register_worker

    broker = Broker()
    monkeypatch.setattr(send, "celery_app", lambda: broker)
    url = f"/api/datasets/{pairs['id']}/stats?base_model={base_model}"
    res = client.post(url)
    assert res.status_code == 200, res.text
    queued = res.json()
    assert (queued["status"], queued["error"]) == ("queued", None)  # waiting, not failed
    broker.up = True
    register_worker(ANALYSIS_QUEUE)
    assert sweep().resent["analysis"] == [] and broker.sent == []  # tried just now: not yet
    with session_scope() as s:  # STUDIO_REDELIVER_SECONDS later
        row = s.get(DatasetAnalysis, queued["id"])
        assert row is not None
        row.sent_at = utcnow() - timedelta(minutes=5)
    assert sweep().resent["analysis"] == [queued["id"]] and broker.sent == [queued["id"]]
    compute_queued("stats")
    assert client.get(url).json()["status"] == "done"


def test_an_analysis_whose_worker_went_away_is_computed_again_then_failed(
    client: TestClient, pairs: dict, base_model: int
) -> None:
    from backend.dataset.analysis import claim_analysis, finish_analysis, record_progress
    from backend.work.lease import LeaseLost, holding
    from backend.work.reaper import sweep

    def silence(analysis_id: int) -> None:  # its worker went silent: the last heartbeat is older than the lease
        with session_scope() as s:
            row = s.get(DatasetAnalysis, analysis_id)
            assert row is not None
            row.heartbeat_at = utcnow() - timedelta(minutes=10)

    url = f"/api/datasets/{pairs['id']}/stats?base_model={base_model}"
    analysis_id = client.post(url).json()["id"]
    lost = claim_analysis(analysis_id, "w1")
    assert lost is not None and claim_analysis(analysis_id, "w2") is None
    with holding(lost):
        record_progress(analysis_id, phase="tokenizing", done=2, total=5)
    silence(analysis_id)
    swept = sweep()
    assert (swept.requeued["analysis"], swept.ended["analysis"]) == ([analysis_id], [])
    assert client.get(url).json() == {
        "id": analysis_id,
        "status": "queued",
        "result": None,
        "error": None,
        "progress": None,
    }
    # The lost worker comes back: what it writes is refused.
    with holding(lost), pytest.raises(LeaseLost):
        finish_analysis(analysis_id, result={"records": 0})
    assert client.get(url).json()["status"] == "queued"

    # Each worker lost on it costs an attempt: the fourth (STUDIO_MAX_ATTEMPTS) is the last.
    for attempt in (2, 3, 4):
        won = claim_analysis(analysis_id, f"w{attempt}")
        assert won is not None and won.attempt == attempt
        silence(analysis_id)
        swept = sweep()
        expected = ([analysis_id], []) if attempt < 4 else ([], [analysis_id])
        assert (swept.requeued["analysis"], swept.ended["analysis"]) == expected
    failed = client.get(url).json()
    assert failed["status"] == "failed"
    assert failed["error"] == "the analysis worker (w4) stopped answering, on attempt 4 of 4"
    # Asked for again, it is computed on a live worker.
    assert client.post(url + "&refresh=true").json()["status"] == "queued"
    compute_queued("stats")
    assert client.get(url).json()["status"] == "done"


def test_refresh_sends_a_failed_analysis_again(
    client: TestClient, pairs: dict, base_model: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.dataset.analysis import claim_analysis, finish_analysis
    from backend.work import send

    broker = Broker()
    broker.up = True
    monkeypatch.setattr(send, "celery_app", lambda: broker)
    url = f"/api/datasets/{pairs['id']}/stats?base_model={base_model}"
    analysis_id = client.post(url).json()["id"]
    assert claim_analysis(analysis_id) is not None
    finish_analysis(analysis_id, error="RuntimeError: out of memory")
    failed = client.post(url).json()  # a failure is kept: computing it again would fail again
    assert (failed["id"], failed["status"], failed["error"]) == (analysis_id, "failed", "RuntimeError: out of memory")
    again = client.post(url + "&refresh=true").json()
    assert (again["id"], again["status"], again["error"]) == (analysis_id, "queued", None)
    assert broker.sent == [analysis_id, analysis_id]
    with session_scope() as s:  # queued by a person: the automatic retries count afresh from here
        row = s.get(DatasetAnalysis, analysis_id)
        assert row is not None
        assert (row.attempt, row.attempt_base, row.lease_worker) == (1, 1, None)


def test_a_concurrent_insert_of_the_same_analysis_is_reused(
    client: TestClient, pairs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.dataset import analysis
    from backend.db import Dataset

    params = {"validation_dataset_id": None, "threshold": 0.8}
    with session_scope() as s:
        dataset = s.get(Dataset, pairs["id"])
        assert dataset is not None
        first, created = analysis._get_or_create(s, dataset=dataset, kind="hygiene", params=params)
        assert created
    find, calls = analysis._find, []

    def late(*args: Any) -> Any:
        # The second request looks before the first commits, then inserts too late.
        calls.append(args)
        return None if len(calls) == 1 else find(*args)

    monkeypatch.setattr(analysis, "_find", late)
    with session_scope() as s:
        dataset = s.get(Dataset, pairs["id"])
        assert dataset is not None
        second, created = analysis._get_or_create(s, dataset=dataset, kind="hygiene", params=params)
        assert (second.id, created) == (first.id, False)
        assert len(calls) == 2
        assert s.get(Dataset, pairs["id"]) is not None  # the session is still usable after the savepoint


def test_fixes_keep_an_empty_prompt(client: TestClient) -> None:
    """An empty prompt is valid prompt/completion data: the fixed version must keep it (and so validate)."""
    records = [
        {"prompt": "", "completion": "Once upon a time"},
        {"prompt": "", "completion": "Once upon a time"},
        {"prompt": "", "completion": "The end"},
    ]
    ds = upload(client, "open.jsonl", records)
    client.post(f"/api/datasets/{ds['id']}/hygiene")
    compute_queued("hygiene")
    res = client.post(f"/api/datasets/{ds['id']}/fixes", json={"drop_exact_duplicates": True})
    assert res.status_code == 201, res.text
    rows = client.get(f"/api/datasets/{res.json()['id']}/preview").json()["rows"]
    assert rows == [{"prompt": "", "completion": "Once upon a time"}, {"prompt": "", "completion": "The end"}]


@pytest.mark.parametrize(
    ("records", "objective"),
    [
        ([{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}], "sft"),
        ([{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}], "causal_lm"),
        ([{"text": "great film", "label": 1}, {"text": "bad film", "label": 0}], "sft"),
        ([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}], "causal_lm"),
    ],
)
def test_analyses_take_only_the_objective_and_shape_pairs_jobs_take(
    client: TestClient, base_model: int, records: list[dict[str, Any]], objective: str
) -> None:
    from backend.method import registry

    ds = upload(client, "data.jsonl", records)
    assert ds["shape"] not in registry.objective(objective).shapes
    for path in (f"stats?objective={objective}", f"render?objective={objective}&index=0"):
        res = client.post(f"/api/datasets/{ds['id']}/{path}&base_model={base_model}")
        assert res.status_code == 422 and res.json()["field"] == "objective", res.text
