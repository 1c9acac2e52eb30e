"""The dataset page's analyses: the dry run starts with a chat model for chat data (not the newest tiny
pretrain), and the statistics name the tokens max_length cuts off."""

import io
import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.dataset.service import dry_run_model
from backend.db import DatasetAnalysis, Model, User, session_scope
from tests.workers.tokenizers import plain_tokenizer
from workers.analysis.tasks import analyze_dataset

CHAT = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}]


def _upload(client: TestClient, name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    res = client.post("/api/datasets", files={"file": (name, io.BytesIO(body))})
    assert res.status_code == 201, res.text
    return dict(res.json())


def _add_model(name: str, directory: Path, *, template: bool) -> int:
    directory.mkdir(parents=True)
    if template:  # all the page reads of a tokenizer: whether it carries a chat template
        (directory / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    with session_scope() as s:
        user = s.scalars(select(User).where(User.email == "owner@example.com")).one()
        model = Model(owner_id=user.id, name=name, source="local", path=str(directory))
        s.add(model)
        s.flush()
        return model.id


def _selected(page: str) -> int:
    select_html = page.split('id="analysis-base-model"', 1)[1].split("</select>", 1)[0]
    found = re.findall(r'<option value="(\d+)" selected>', select_html)
    assert len(found) == 1, select_html
    return int(found[0])


def test_the_dry_run_starts_with_a_chat_model_for_chat_data(client: TestClient, tmp_path: Path) -> None:
    chat = _add_model("SmolLM2-135M-Instruct", tmp_path / "chat", template=True)
    tiny = _add_model("tiny pretrain", tmp_path / "tiny", template=False)  # newer: first in the list
    messages = _upload(client, "chat.jsonl", CHAT)
    text = _upload(client, "text.jsonl", [{"text": "plain text"}])

    page = client.get(f"/datasets/{messages['id']}").text
    assert _selected(page) == chat
    assert "SmolLM2-135M-Instruct · chat template" in page and 'id="analysis-model-help"' in page
    assert _selected(client.get(f"/datasets/{text['id']}").text) == tiny  # raw text: no template involved


def test_dry_run_model_choice() -> None:
    def model(id_: int, name: str, status: str = "ready") -> Model:
        return Model(id=id_, name=name, status=status, path="/nowhere")

    newest_first = [model(4, "importing", "importing"), model(3, "tiny"), model(2, "Qwen2.5-0.5B-Instruct")]
    assert dry_run_model(newest_first, shape="messages", chat=set()) == 2  # named like an instruct model
    assert dry_run_model(newest_first, shape="messages", chat={3}) == 3  # a template beats a name
    assert dry_run_model(newest_first, shape="text", chat={2}) == 3  # the newest ready one
    assert dry_run_model(newest_first[:2], shape="preference", chat=set()) == 3
    assert dry_run_model([], shape="messages", chat=set()) is None


def test_statistics_name_the_tokens_max_length_cuts(client: TestClient, tmp_path: Path) -> None:
    directory = tmp_path / "tok"
    plain_tokenizer().save_pretrained(directory)
    base = _add_model("tok", tmp_path / "unused", template=False)
    with session_scope() as s:
        s.get(Model, base).path = str(directory)  # type: ignore[union-attr]
    long = {"prompt": "Tell a story.", "completion": " ".join(["once upon a time"] * 30)}
    ds = _upload(client, "pairs.jsonl", [long, {"prompt": "Hi", "completion": "Hello"}])
    url = f"/api/datasets/{ds['id']}/stats?base_model={base}&max_length=16&batch_size=2"
    assert client.post(url).json()["status"] == "queued"
    with session_scope() as s:
        ids = list(s.scalars(select(DatasetAnalysis.id).where(DatasetAnalysis.kind == "stats")))
    for analysis_id in ids:
        analyze_dataset(analysis_id)
    result = client.get(url).json()["result"]
    cut, lost = result["cut_tokens"], result["lost_supervised_tokens"]
    assert cut >= lost > 0 and result["truncated_records"] >= 1
    share = f"{cut / result['tokens']:.1%}"
    assert result["cut_summary"] == (
        f"{cut:,} tokens ({share}) beyond max_length=16 would be cut, {lost:,} of them supervised"
    )
    page = client.get(f"/datasets/{ds['id']}").text
    assert 'id="stats-cut"' in page


def test_the_dry_run_offers_the_objectives_a_job_on_the_data_could_train(client: TestClient) -> None:
    """The dataset page's objective choice comes from the registry: the shape's objectives, its default first
    chosen (preference pairs dry-run as DPO, which a job on them trains, not as SFT, which it refuses)."""
    pairs = _upload(client, "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}])
    text = client.post("/api/datasets", files={"file": ("t.txt", io.BytesIO(b"Once upon a time.\n"))}).json()
    chat = _upload(client, "chat.jsonl", CHAT)

    def offered(dataset_id: int) -> tuple[list[str], list[str]]:
        page = client.get(f"/datasets/{dataset_id}").text
        select = page.split('id="analysis-objective"', 1)[1].split("</select>", 1)[0]
        options = re.findall(r'<option value="(\w+)"( selected)?', select)
        return [name for name, _ in options], [name for name, chosen in options if chosen]

    assert offered(pairs["id"]) == (["dpo"], ["dpo"])
    assert offered(text["id"]) == (["causal_lm"], ["causal_lm"])
    assert offered(chat["id"]) == (["sft"], ["sft"])
