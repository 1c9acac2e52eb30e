"""Every file type and layout, detected and read into its canonical shape (fixtures in tests/fixtures/formats;
parquet and gzip variants are made from them at test time, so no binaries live in git)."""

import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from backend.dataset.formats import Limits, read_records, summarize

FORMATS = Path(__file__).parent.parent / "fixtures" / "formats"


def _fixture(name: str) -> Callable[[], bytes]:
    return lambda: (FORMATS / name).read_bytes()


def _gzip(name: str) -> Callable[[], bytes]:
    return lambda: gzip.compress((FORMATS / name).read_bytes())


def _parquet(rows: list[dict[str, Any]]) -> Callable[[], bytes]:
    def make() -> bytes:
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=2)  # several row groups
        return out.getvalue()

    return make


def _jsonl_rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FORMATS / name).read_text().splitlines()]


ALPACA_ROWS = json.loads((FORMATS / "alpaca.json").read_text())
SHAREGPT_ROWS = _jsonl_rows("sharegpt.jsonl")
LABEL_ROWS = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "fine", "label": 1}]

# (upload name, content, options, layout, shape, records)
CASES: list[tuple[str, Callable[[], bytes], dict[str, Any], str, str, int]] = [
    ("prose.txt", _fixture("prose.txt"), {}, "text", "text", 3),
    ("prose.txt", _fixture("prose.txt"), {"text_split": "paragraph"}, "text", "text", 3),
    ("prose.txt", _fixture("prose.txt"), {"text_split": "line"}, "text", "text", 5),
    ("prose.txt", _fixture("prose.txt"), {"text_split": "file"}, "text", "text", 1),
    ("notes.md", _fixture("notes.md"), {}, "text", "text", 3),
    ("alpaca.json", _fixture("alpaca.json"), {}, "alpaca", "prompt_completion", 3),
    ("alpaca_system.jsonl", _fixture("alpaca_system.jsonl"), {}, "alpaca", "prompt_completion", 3),
    ("alpaca_history.json", _fixture("alpaca_history.json"), {}, "alpaca", "messages", 2),
    ("wrapped.json", _fixture("wrapped.json"), {}, "prompt_completion", "prompt_completion", 4),
    ("prompt_completion.jsonl", _fixture("prompt_completion.jsonl"), {}, "prompt_completion", "prompt_completion", 3),
    ("text.jsonl", _fixture("text.jsonl"), {}, "jsonl_text", "text", 3),
    ("lines.json", _fixture("text.jsonl"), {}, "jsonl_text", "text", 3),  # JSON Lines named .json
    ("lines.ndjson", _fixture("openai.jsonl"), {}, "openai", "messages", 3),
    ("sharegpt.jsonl", _fixture("sharegpt.jsonl"), {}, "sharegpt", "messages", 3),
    ("sharegpt_tools.json", _fixture("sharegpt_tools.json"), {}, "sharegpt", "messages", 2),
    ("openai.jsonl", _fixture("openai.jsonl"), {}, "openai", "messages", 3),
    ("preference.jsonl", _fixture("preference.jsonl"), {}, "preference", "preference", 3),
    ("preference_messages.jsonl", _fixture("preference_messages.jsonl"), {}, "preference", "preference", 2),
    ("sharegpt_preference.json", _fixture("sharegpt_preference.json"), {}, "sharegpt_preference", "preference", 2),
    ("openai_preference.jsonl", _fixture("openai_preference.jsonl"), {}, "openai_preference", "preference", 2),
    ("text_label.csv", _fixture("text_label.csv"), {}, "text_label", "classification", 4),
    ("sst2.tsv", _fixture("sst2.tsv"), {}, "sentence_label", "classification", 5),
    ("alpaca.parquet", _parquet(ALPACA_ROWS), {}, "alpaca", "prompt_completion", 3),
    ("sharegpt.parquet", _parquet(SHAREGPT_ROWS), {}, "sharegpt", "messages", 3),
    ("labels.parquet", _parquet(LABEL_ROWS), {}, "text_label", "classification", 3),
    ("prose.txt.gz", _gzip("prose.txt"), {}, "text", "text", 3),
    ("openai.jsonl.gz", _gzip("openai.jsonl"), {}, "openai", "messages", 3),
    ("alpaca.json.gz", _gzip("alpaca.json"), {}, "alpaca", "prompt_completion", 3),
    ("sst2.tsv.gz", _gzip("sst2.tsv"), {}, "sentence_label", "classification", 5),
    ("alpaca.parquet.gz", lambda: gzip.compress(_parquet(ALPACA_ROWS)()), {}, "alpaca", "prompt_completion", 3),
    ("magic.jsonl", _gzip("text.jsonl"), {}, "jsonl_text", "text", 3),  # gzip found by its magic bytes
    # overrides: the shape, the layout, and columns mapped onto canonical fields
    ("alpaca.json", _fixture("alpaca.json"), {"shape": "messages"}, "alpaca", "messages", 3),
    ("pc.jsonl", _fixture("prompt_completion.jsonl"), {"shape": "messages"}, "prompt_completion", "messages", 3),
    ("labels.csv", _fixture("text_label.csv"), {"layout": "jsonl_text"}, "jsonl_text", "text", 4),
    (
        "qa.csv",
        _fixture("qa.csv"),
        {"columns": {"prompt": "question", "completion": "answer"}},
        "prompt_completion",
        "prompt_completion",
        3,
    ),
    (
        "a.json",
        _fixture("alpaca.json"),
        {"columns": {"prompt": "instruction", "completion": "output"}},
        "prompt_completion",
        "prompt_completion",
        3,
    ),
    ("a.parquet", _parquet(ALPACA_ROWS), {"columns": {"text": "output"}}, "jsonl_text", "text", 3),
    (
        "dialog.jsonl",
        lambda: "".join(json.dumps({"dialog": r["conversations"]}) + "\n" for r in SHAREGPT_ROWS).encode(),
        {"columns": {"conversations": "dialog"}},
        "sharegpt",
        "messages",
        3,
    ),
]


def _upload(client: TestClient, name: str, content: bytes, options: dict[str, Any] | None = None) -> Any:
    data = {"options": json.dumps(options)} if options else {}
    return client.post("/api/datasets", files={"file": (name, io.BytesIO(content))}, data=data)


@pytest.mark.parametrize(
    ("name", "content", "options", "layout", "shape", "count"),
    CASES,
    ids=[f"{c[0]}{'-' + '-'.join(c[2]) if c[2] else ''}" for c in CASES],
)
def test_format_table(
    client: TestClient,
    name: str,
    content: Callable[[], bytes],
    options: dict[str, Any],
    layout: str,
    shape: str,
    count: int,
) -> None:
    res = _upload(client, name, content(), options)
    assert res.status_code == 201, res.text
    body = res.json()
    assert (body["layout"], body["format"], body["shape"], body["record_count"]) == (layout, layout, shape, count)
    assert body["confidence"] == 1.0 and body["version"] == 1 and body["parent_id"] is None
    assert body["options"]["layout"] == layout and body["options"]["shape"] == shape
    rows = client.get(f"/api/datasets/{body['id']}/preview").json()["rows"]
    assert len(rows) == count
    assert all(_is_shape(shape, row) for row in rows), rows


def _is_shape(shape: str, row: dict[str, Any]) -> bool:
    keys = set(row)
    if shape == "text":
        return keys == {"text"} and bool(row["text"].strip())
    if shape == "prompt_completion":
        return {"prompt", "completion"} <= keys <= {"prompt", "completion", "system"}
    if shape == "messages":
        return {"messages"} <= keys <= {"messages", "tools"} and all(
            m["role"] in ("system", "user", "assistant", "tool") and isinstance(m["content"], str)
            for m in row["messages"]
        )
    if shape == "preference":
        return keys == {"prompt", "chosen", "rejected"}
    return keys == {"text", "label"} and isinstance(row["label"], str | int)


def test_canonical_records_of_each_layout(tmp_path: Path) -> None:
    def first(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        summary = summarize(FORMATS / name, name, options, limits=Limits())
        assert summary.error_count == 0, summary.errors
        return next(iter(read_records(FORMATS / name, name, summary.options)))

    system = {"prompt": "Name a colour.", "completion": "Blue.", "system": "You are terse."}
    assert first("alpaca_system.jsonl") == system
    assert first("alpaca_history.json")["messages"] == [
        {"role": "user", "content": "Translate cat to French."},
        {"role": "assistant", "content": "chat"},
        {"role": "user", "content": "And in German?"},
        {"role": "assistant", "content": "Katze"},
    ]
    assert first("alpaca.json", {"shape": "messages"})["messages"][-1] == {"role": "assistant", "content": "Blue."}
    tools = first("sharegpt_tools.json")
    assert tools["tools"][0]["function"]["name"] == "weather"
    call = tools["messages"][1]
    assert call["role"] == "assistant"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tools["messages"][2]["role"] == "tool"
    openai = list(read_records(FORMATS / "openai.jsonl", "openai.jsonl"))
    assert openai[1]["messages"][1] == {"role": "assistant", "content": "bad draft", "weight": 0}
    assert openai[2]["messages"][1]["content"] == "" and openai[2]["messages"][2]["tool_call_id"] == "c1"
    sharegpt = list(read_records(FORMATS / "sharegpt.jsonl", "sharegpt.jsonl"))
    assert sharegpt[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert first("sharegpt_preference.json") == {
        "prompt": [{"role": "user", "content": "Sky colour?"}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}],
    }
    assert first("preference.jsonl") == {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}
    labels = list(read_records(FORMATS / "text_label.csv", "text_label.csv"))
    assert labels[2] == {"text": 'He said "wow", then left', "label": "positive"}
    assert labels[3]["text"] == "A review\nover two lines"
    sst2 = summarize(FORMATS / "sst2.tsv", "sst2.tsv", limits=Limits())
    assert sst2.options["quoting"] == "none"
    rows = list(read_records(FORMATS / "sst2.tsv", "sst2.tsv", sst2.options))
    assert rows[1] == {"text": '" a charming and affecting journey ', "label": 1}
    assert first("qa.csv", {"columns": {"prompt": "question", "completion": "answer"}}) == {
        "prompt": "What is 2+2?",
        "completion": "4",
    }


def test_text_split_modes(tmp_path: Path) -> None:
    def texts(split: str) -> list[str]:
        return [r["text"] for r in read_records(FORMATS / "prose.txt", "prose.txt", {"text_split": split})]

    assert texts("paragraph")[0] == "The first paragraph\nruns over two lines."
    assert texts("line")[:2] == ["The first paragraph", "runs over two lines."]
    assert texts("file") == [(FORMATS / "prose.txt").read_text().rstrip("\n")]


def test_quoting_none_is_detected_when_strict_parsing_fails_past_the_head(tmp_path: Path) -> None:
    # The first 64 KiB parse cleanly with csv quoting; a sentence opening with a quote comes later.
    lines = ["sentence\tlabel"] + [f"plain sentence number {i} \t{i % 2}" for i in range(3000)]
    lines.append('" an opening quote and no closing one \t1')
    lines += [f"more text {i} \t0" for i in range(5)]
    path = tmp_path / "late.tsv"
    path.write_text("\n".join(lines) + "\n")
    summary = summarize(path, "late.tsv", limits=Limits())
    assert summary.error_count == 0, summary.errors
    assert (summary.record_count, summary.options["quoting"]) == (3006, "none")
    strict = summarize(path, "late.tsv", {"quoting": "minimal"}, limits=Limits())
    assert strict.error_count > 0


def test_detection_states_its_confidence(tmp_path: Path) -> None:
    rows = [{"text": f"doc {i}"} for i in range(8)] + [{"body": "no text key"}, {"text": 3}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(path, "mixed.jsonl", limits=Limits())
    assert (summary.format, summary.confidence, summary.error_count) == ("jsonl_text", 0.8, 2)
    assert [e["line"] for e in summary.errors] == [9, 10]


def test_inspect_detects_without_storing(client: TestClient, app_env: dict[str, str]) -> None:
    qa = (FORMATS / "qa.csv").read_bytes()
    res = client.post("/api/datasets/inspect", files={"file": ("qa.csv", io.BytesIO(qa))})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["reader"] == "csv" and body["columns"] == ["id", "question", "answer"]
    assert body["sample"][0] == {"id": "1", "question": "What is 2+2?", "answer": "4"}
    assert body["error_count"] == 1 and "options.columns" in body["errors"][0]["message"]
    assert body["layouts"]["alpaca"] == ["prompt_completion", "messages"]
    mapped = client.post(
        "/api/datasets/inspect",
        files={"file": ("qa.csv", io.BytesIO(qa))},
        data={"options": json.dumps({"columns": {"prompt": "question", "completion": "answer"}})},
    ).json()
    assert (mapped["layout"], mapped["shape"], mapped["confidence"], mapped["error_count"]) == (
        "prompt_completion",
        "prompt_completion",
        1.0,
        0,
    )
    assert mapped["preview"][1] == {"prompt": "Capital of Italy?", "completion": "Rome"}
    first = client.post(
        "/api/datasets/inspect",
        files={"file": ("t.txt", io.BytesIO(b"a\n\nb\n\nc\n"))},
        data={"max_records": "2"},
    ).json()
    assert (first["record_count"], first["complete"]) == (2, False)
    assert client.get("/api/datasets").json()["items"] == []
    data_dir = Path(app_env["STUDIO_DATA_DIR"])
    assert not [p for p in data_dir.rglob("*") if p.is_file() and p.parent.name in ("tmp", "datasets")]


def test_warnings_are_kept_with_the_dataset(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from backend.config import get_settings

    monkeypatch.setenv("STUDIO_LONG_RECORD_BYTES", "200")
    get_settings.cache_clear()
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Anyone?"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "long"}]},
    ]
    body = _upload(client, "w.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()).json()
    assert body["record_count"] == 5 and body["warning_count"] == 4
    found = {(w["line"], w["code"], w["field"]) for w in body["warnings"]}
    assert found == {
        (2, "duplicate", None),
        (3, "no_assistant", "messages"),
        (4, "empty_assistant", "messages[1].content"),
        (5, "long_record", None),
    }
    assert "exact duplicate of line 1" in body["warnings"][0]["message"]
    ends = _upload(
        client, "u.jsonl", b'{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}\n'
    ).json()
    assert [w["code"] for w in ends["warnings"]] == ["ends_on_user"]
    labels = "text,label\n" + "".join(f"t{i},{'a' if i else 'b'}\n" for i in range(30))
    imbalance = _upload(client, "l.csv", labels.encode()).json()
    assert imbalance["warnings"][0]["code"] == "label_imbalance" and "'a' has 29" in imbalance["warnings"][0]["message"]
    pair = _upload(client, "p.jsonl", b'{"prompt": "q", "chosen": "same", "rejected": "same"}\n').json()
    assert [w["code"] for w in pair["warnings"]] == ["identical_pair"]


def test_duplicates_are_counted_past_the_remembered_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.dataset.formats import summary as summary_module

    monkeypatch.setattr(summary_module._Duplicates, "LINES", 3)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i % 5}"}) + "\n" for i in range(20)))
    result = summarize(path, "d.jsonl", limits=Limits())
    assert (result.record_count, result.warning_count) == (20, 15)
    assert [w["line"] for w in result.warnings][:3] == [6, 7, 8]  # copies of the remembered first three


def test_new_version_of_a_dataset(client: TestClient) -> None:
    from backend.config import get_settings
    from backend.dataset.service import ingest_file
    from backend.db import Dataset, User, session_scope

    first = _upload(client, "a.json", (FORMATS / "alpaca.json").read_bytes()).json()
    tmp = get_settings().path("tmp") / "next.part"
    tmp.write_bytes((FORMATS / "alpaca_system.jsonl").read_bytes())
    with session_scope() as s:
        parent = s.get(Dataset, first["id"])
        assert parent is not None
        user = s.get(User, parent.owner_id)
        assert user is not None
        child = ingest_file(s, user=user, path=tmp, filename="a2.jsonl", parent=parent, note="added a system prompt")
        child_id = child.id
    assert not tmp.exists()
    body = client.get(f"/api/datasets/{child_id}").json()
    assert (body["version"], body["parent_id"], body["note"]) == (2, first["id"], "added a system prompt")


def test_duplicate_detection_memory_is_capped_past_its_exact_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past EXACT records, hashes go through a fixed-size Bloom filter: duplicates still counted (approximately,
    and said so), and the exact hash array stops growing."""
    from backend.dataset.formats import summary as walk

    monkeypatch.setattr(walk._Duplicates, "EXACT", 10)
    monkeypatch.setattr(walk._Duplicates, "LINES", 3)
    monkeypatch.setattr(walk._Duplicates, "BLOOM_BITS", 1 << 16)
    monkeypatch.setattr(walk._Duplicates, "BATCH", 7)
    lines = [f"line {i}" for i in range(40)] + ["line 1", "line 15", "line 39", "line 39"]
    path = tmp_path / "many.txt"
    path.write_text("\n".join(lines) + "\n")
    result = summarize(path, "many.txt", {"text_split": "line"})
    assert result.record_count == 44 and result.error_count == 0
    assert result.warning_count == 4 + 1  # four duplicates, and the note that they are approximate
    assert result.warnings[0]["code"] == "duplicates_approximate" and "Bloom filter" in result.warnings[0]["message"]
    named = [w["message"] for w in result.warnings if w["code"] == "duplicate"]
    assert named == ["exact duplicate of line 2"]  # only the first LINES records' lines are remembered

    duplicates = walk._Duplicates()
    for i in range(1000):
        duplicates.add((i % 500) * 0x9E3779B97F4A7C15 % 2**63, i + 1)
    assert len(duplicates.hashes) == 10 and duplicates.total() == 500
