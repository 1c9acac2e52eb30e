"""A corpus of malformed uploads: each is a 4xx naming the problem (line and field where there are some), never a
5xx, and leaves no dataset and no file behind. Big and binary cases are generated at test time."""

import gzip
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

MB = 1024**2


def _lines(*rows: Any) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages)}


USER = {"role": "user", "content": "hi"}
BOT = {"role": "assistant", "content": "hello"}


def _huge_line() -> bytes:
    return b'{"text": "' + b"a" * (50 * MB) + b'"}\n'


def _gzip_bomb() -> bytes:
    """About 1 GB of JSON Lines records in ~2 MB: one small gzip member repeated (members concatenate)."""
    member = gzip.compress((b'{"text": "' + b"a" * 1000 + b'"}\n') * 1000)
    return member * 1000


def _zeros_bomb() -> bytes:
    return gzip.compress(bytes(MB)) * 1024  # 1 GiB of zeros


def _deep(levels: int) -> bytes:
    return b'{"text": "x", "extra": ' + b"[" * levels + b"]" * levels + b"}\n"


ALPACA = {"instruction": "a", "input": "", "output": "b"}

# (upload name, content, options, status, what the detail must say)
CASES: list[tuple[str, Callable[[], bytes], dict[str, Any], int, str]] = [
    # empty and binary
    ("empty.txt", lambda: b"", {}, 422, "the file is empty"),
    ("blank.jsonl", lambda: b"\n \n\n", {}, 422, "the file is empty"),
    ("bom_only.txt", lambda: b"\xef\xbb\xbf\n", {}, 422, "the file is empty"),
    ("garbage.txt", lambda: random.Random(0).randbytes(4096), {}, 422, "not UTF-8: invalid byte at byte offset"),
    ("garbage.jsonl", lambda: random.Random(1).randbytes(4096), {}, 422, "line 1: "),
    ("nul.txt", lambda: b"text\x00with a NUL\n", {}, 422, "line 1: binary data"),
    # unsupported types (415)
    ("model.bin", lambda: bytes(range(256)), {}, 415, "accepted are .txt, .md, .json, .jsonl, .csv, .tsv"),
    ("picture.png", lambda: b"\x89PNG\r\n\x1a\n" + bytes(64), {}, 415, "unsupported file type '.png'"),
    ("README", lambda: b"hello\n", {}, 415, "without an extension"),
    ("..\\..\\evil.exe", lambda: b"MZ", {}, 415, "'.exe'"),
    # invalid JSON
    ("bad.jsonl", lambda: _lines({"text": "a"}, '{"text": "b",}'), {}, 422, "line 2: invalid JSON"),
    ("bad.json", lambda: b'[\n  {"text": "a"}\n  {"text": "b"}\n]', {}, 422, "line 3: invalid JSON: expected ','"),
    ("open.json", lambda: b'[\n  {"text": "a"},\n  {"text": "b"', {}, 422, "invalid JSON"),
    ("tail.json", lambda: b'[{"text": "a"}] [1]', {}, 422, "more data after the end"),
    ("nan.jsonl", lambda: b'{"text": "a", "score": NaN}\n', {}, 422, "line 1: invalid JSON: NaN is not valid JSON"),
    ("strings.json", lambda: b'["just", "strings"]', {}, 422, "line 1: expected a JSON object (one record), got str"),
    ("scalars.jsonl", lambda: _lines({"text": "a"}, "[1, 2]"), {}, 422, "line 2: expected a JSON object"),
    ("object.json", lambda: b'{"instruction": "a", "output": "b"}', {}, 422, "expected a JSON array of records"),
    ("surrogate.jsonl", lambda: b'{"text": "bad \\udc00 escape"}\n', {}, 422, "line 1: field 'text': invalid unicode"),
    ("surkey.jsonl", lambda: b'{"text": "ok", "k\\ud800": "\\udc00"}\n', {}, 422, "field '(key)': invalid unicode"),
    (
        "surrole.jsonl",
        lambda: b'{"messages": [{"role": "\\ud800", "content": "x"}]}\n',
        {},
        422,
        "line 1: field 'messages[0].role': invalid unicode",
    ),
    # wrong type, missing field, unknown layout
    ("type.jsonl", lambda: _lines({"text": "a"}, {"text": 5}), {}, 422, "line 2: field 'text': expected a string"),
    ("missing.jsonl", lambda: _lines(ALPACA, {"instruction": "c"}), {}, 422, "line 2: field 'output': missing"),
    ("empty_out.json", lambda: json.dumps([ALPACA, {**ALPACA, "output": " "}]).encode(), {}, 422, "empty output"),
    ("unknown.jsonl", lambda: _lines({"foo": 1}), {}, 422, "line 1: records need a 'text' field"),
    (
        "history.json",
        lambda: json.dumps([{**ALPACA, "history": [["q", "a"]]}]).encode(),
        {"shape": "prompt_completion"},
        422,
        "field 'history': earlier turns need the 'messages' shape",
    ),
    ("badhist.json", lambda: json.dumps([{**ALPACA, "history": [["q"]]}]).encode(), {}, 422, "field 'history[0]'"),
    # conversations
    (
        "role.jsonl",
        lambda: _lines(_chat(USER, BOT), _chat(USER, {"role": "bot", "content": "x"})),
        {},
        422,
        "line 2: field 'messages[1].role': unknown role 'bot'",
    ),
    (
        "from.jsonl",
        lambda: _lines({"conversations": [{"from": "robot", "value": "x"}]}),
        {},
        422,
        "line 1: field 'conversations[0].from': unknown role 'robot'",
    ),
    ("noconv.jsonl", lambda: _lines(_chat(USER, BOT), {"messages": []}), {}, 422, "line 2: field 'messages': empty"),
    ("nosharegpt.jsonl", lambda: _lines({"conversations": []}), {}, 422, "field 'conversations': empty conversation"),
    (
        "content.jsonl",
        lambda: _lines(_chat(USER, {"role": "assistant", "content": 7})),
        {},
        422,
        "line 1: field 'messages[1].content': expected a string",
    ),
    (
        "image.jsonl",
        lambda: _lines(_chat({"role": "user", "content": [{"type": "image_url"}]}, BOT)),
        {},
        422,
        "field 'messages[0].content[0]': only text content parts",
    ),
    (
        "weight.jsonl",
        lambda: _lines(_chat(USER, {**BOT, "weight": 2})),
        {},
        422,
        "field 'messages[1].weight': expected 0 or 1",
    ),
    (
        "call.jsonl",
        lambda: _lines({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "x"}]}),
        {},
        422,
        "field 'conversations[1].value': a function_call value must be JSON",
    ),
    ("pref.jsonl", lambda: _lines({"prompt": "q", "chosen": "", "rejected": "b"}), {}, 422, "field 'chosen': empty"),
    (
        "oai_pref.jsonl",
        lambda: _lines(
            {"input": {"messages": [USER]}, "preferred_output": [BOT], "non_preferred_output": [{"role": "x"}]}
        ),
        {},
        422,
        "field 'non_preferred_output[0].role': unknown role",
    ),
    (
        "oai_pref3.jsonl",
        lambda: _lines(
            {
                "input": {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]},
                "preferred_output": [BOT],
                "non_preferred_output": [BOT],
            }
        ),
        {},
        422,
        "field 'input.tools': tool definitions in a DPO record are not supported",
    ),
    (
        "oai_pref2.jsonl",
        lambda: _lines({"input": [USER], "preferred_output": "a", "non_preferred_output": "b"}),
        {},
        422,
        "field 'input': expected an object",
    ),
    # classification labels
    (
        "float.jsonl",
        lambda: _lines({"text": "a", "label": 0.5}),
        {},
        422,
        "field 'label': expected a string or integer",
    ),
    ("bool.jsonl", lambda: _lines({"text": "a", "label": True}), {}, 422, "label, got bool"),
    ("nolabel.csv", lambda: b"text,label\ngood,1\nbad,\n", {}, 422, "line 3: field 'label': empty label"),
    # CSV / TSV
    (
        "ragged.csv",
        lambda: b"text,label\ngood,1\nbad,0,extra\n",
        {},
        422,
        "line 3: the row has 3 fields, the header has 2",
    ),
    ("short.tsv", lambda: b"sentence\tlabel\ngood\t1\nbad\n", {}, 422, "line 3: the row has 1 fields"),
    ("dup.csv", lambda: b"text,text\na,b\n", {}, 422, "line 1: the header names column 'text' twice"),
    ("quote.csv", lambda: b'text,label\n"a"b,1\n', {"quoting": "minimal"}, 422, "line 2: CSV: ',' expected after"),
    # encodings
    ("latin1.txt", lambda: "café\n".encode("latin-1"), {}, 422, "line 1: not UTF-8: invalid byte at byte offset 3"),
    ("latin1.jsonl", lambda: _lines({"text": "ok"}) + '{"text": "café"}\n'.encode("latin-1"), {}, 422, "line 2"),
    ("latin1.json", lambda: '[{"text": "café"}]'.encode("latin-1"), {}, 422, "not UTF-8: invalid byte at byte offset"),
    ("latin1.csv", lambda: "text,label\ncafé,1\n".encode("latin-1"), {}, 422, "line 2: not UTF-8"),
    ("utf16.txt", lambda: "hello\n".encode("utf-16"), {}, 422, "the file is UTF-16"),
    ("utf16.jsonl", lambda: '{"text": "a"}\n'.encode("utf-16"), {}, 422, "the file is UTF-16"),
    ("utf16.json", lambda: '[{"text": "a"}]'.encode("utf-16"), {}, 422, "the file is UTF-16"),
    ("utf16le.txt", lambda: "hello\n".encode("utf-16-le"), {}, 422, "binary data"),
    # size limits (413) and nesting (422)
    ("huge.jsonl", _huge_line, {}, 413, "line 1: longer than the limit of 16777216 bytes (max_line_bytes)"),
    ("huge.txt", lambda: b"a" * (50 * MB), {}, 413, "max_line_bytes"),
    ("huge.json", lambda: b"[" + _huge_line().rstrip() + b"]", {}, 413, "longer than the limit"),
    ("deep.jsonl", lambda: _deep(100), {}, 422, "line 1: JSON nested too deeply: over the limit of 64 levels"),
    ("deeper.jsonl", lambda: _deep(100_000), {}, 422, "line 1: JSON nested too deeply"),
    ("deep.json", lambda: b"[" + _deep(100).rstrip() + b"]", {}, 422, "JSON nested too deeply"),
    ("deeper.json", lambda: b"[" * 100_000 + b"]" * 100_000, {}, 422, "JSON nested too deeply"),
    # gzip
    ("bomb.jsonl.gz", _gzip_bomb, {}, 413, "(max_compression_ratio): refused as a likely gzip bomb"),
    ("zeros.txt.gz", _zeros_bomb, {}, 413, "max_"),
    ("fake.jsonl.gz", lambda: b'{"text": "a"}\n', {}, 422, "the name ends in .gz but the file is not gzip data"),
    ("cut.jsonl.gz", lambda: gzip.compress(_lines({"text": "a"}) * 1000)[:-12], {}, 422, "corrupt gzip data"),
    # parquet
    ("fake.parquet", lambda: b"text\nhello\n", {}, 422, "not a parquet file"),
    ("cut.parquet", lambda: b"PAR1" + bytes(100), {}, 422, "not a readable parquet file"),
    # options
    ("opts.jsonl", lambda: _lines({"text": "a"}), {"shape": "poem"}, 422, "options.shape"),
    ("opts2.jsonl", lambda: _lines({"text": "a"}), {"columns": {"text": "body"}}, 422, "no column 'body'"),
    ("opts3.jsonl", lambda: _lines({"text": "a"}), {"columns": {"answer": "text"}}, 422, "cannot map onto 'answer'"),
    ("opts4.jsonl", lambda: _lines(ALPACA), {"shape": "preference"}, 422, "records need"),
    ("opts5.jsonl", lambda: _lines(ALPACA), {"layout": "alpaca", "shape": "text"}, 422, "options.shape"),
    ("opts6.jsonl", lambda: _lines({"text": "a"}), {"text_split": "line"}, 422, "options.text_split"),
    ("opts7.txt", lambda: b"a\n", {"shape": "messages"}, 422, "field 'options'"),
    ("opts8.jsonl", lambda: _lines({"text": "a"}), {"unknown": 1}, 422, "options.unknown"),
    ("opts9.jsonl", lambda: _lines({"text": "a"}), {"columns": {"text": "a\ud800"}}, 422, "options.columns"),
    # filenames are never trusted
    ("../../../etc/cron.d/evil.jsonl", lambda: b"{oops}\n", {}, 422, "evil.jsonl: line 1: invalid JSON"),
    ("/abs/path/x.json", lambda: b"[1", {}, 422, "x.json: "),
    ("..", lambda: b"x", {}, 415, "upload: unsupported file type without an extension"),
    ("a<b>|c?.jsonl", lambda: b"{oops}\n", {}, 422, "a_b_c_.jsonl: line 1"),
]


def _files(data_dir: Path) -> set[Path]:
    return {p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(("studio.db", "broker.db"))}


def test_malformed_uploads_are_4xx_and_store_nothing(client: TestClient, app_env: dict[str, str]) -> None:
    """One test walks the corpus (a fresh database per case would cost more than all the cases together)."""
    assert len(CASES) >= 30
    data_dir = Path(app_env["STUDIO_DATA_DIR"])
    before = _files(data_dir)
    failures = []
    for name, content, options, status, needle in CASES:
        data = {"options": json.dumps(options)} if options else {}
        res = client.post("/api/datasets", files={"file": (name, io.BytesIO(content()))}, data=data)
        detail = res.json().get("detail", "") if res.headers["content-type"] == "application/json" else res.text
        if res.status_code != status or needle not in detail:
            failures.append(f"{name}: expected {status} with {needle!r}, got {res.status_code}: {detail[:300]}")
        if client.get("/api/datasets").json()["items"] or _files(data_dir) != before:
            failures.append(f"{name}: something was stored")
    assert not list(data_dir.parent.rglob("evil.jsonl"))
    assert not failures, "\n".join(failures)


def test_errors_are_collected_past_the_first(client: TestClient) -> None:
    rows = [{"text": "ok"}] + [{"text": i} for i in range(60)] + ["{broken"]
    res = client.post("/api/datasets", files={"file": ("many.jsonl", io.BytesIO(_lines(*rows)))})
    assert res.status_code == 422
    body = res.json()
    assert body["error_count"] == 61 and len(body["errors"]) == 50 and body["file"] == "many.jsonl"
    assert body["errors"][0] == {"line": 2, "field": "text", "message": "expected a string, got int"}
    assert body["detail"] == "many.jsonl: line 2: field 'text': expected a string, got int (and 60 more errors)"


def test_options_must_be_a_json_object(client: TestClient) -> None:
    for raw in ("{not json", "[1, 2]"):
        res = client.post("/api/datasets", files={"file": ("a.txt", io.BytesIO(b"a\n"))}, data={"options": raw})
        assert res.status_code == 422 and res.json()["field"] == "options"


@pytest.mark.parametrize(
    ("env", "name", "content", "needle"),
    [
        ("STUDIO_MAX_UPLOAD_BYTES", "big.txt", b"word " * 1000, "over the upload limit of 2048 bytes"),
        ("STUDIO_MAX_LINE_BYTES", "line.jsonl", _lines({"text": "a" * 3000}), "line 1: longer than the limit of 2048"),
        ("STUDIO_MAX_DECOMPRESSED_BYTES", "t.txt.gz", gzip.compress(b"word " * 1000), "max_decompressed_bytes"),
    ],
)
def test_limits_from_settings_are_413(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, env: str, name: str, content: bytes, needle: str
) -> None:
    from backend.config import get_settings

    monkeypatch.setenv(env, "2048")
    get_settings.cache_clear()
    for path in ("/api/datasets", "/api/datasets/inspect"):
        res = client.post(path, files={"file": (name, io.BytesIO(content))})
        assert res.status_code == 413, res.text
        assert needle in res.json()["detail"]
    assert client.get("/api/datasets").json()["items"] == []
