"""Dataset upload: recognized layouts, and malformed files refused with the line and problem, nothing stored."""

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

FIXTURES = Path(__file__).parent.parent / "fixtures"

ALPACA = [{"instruction": "Say hi", "input": "", "output": "hi"}, {"instruction": "Add", "input": "1+1", "output": "2"}]


def _upload(client: TestClient, name: str, content: bytes) -> object:
    return client.post("/api/datasets", files={"file": (name, io.BytesIO(content))}, data={"name": "d"})


@pytest.mark.parametrize(
    ("filename", "content", "fmt", "shape", "count"),
    [
        ("plain.txt", b"first doc\nstill first\n\nsecond doc\n", "text", "text", 2),
        ("notes.md", b"\xef\xbb\xbf# Title\n\nbody\n", "text", "text", 2),
        ("t.jsonl", b'{"text": "a"}\n\n{"text": "b"}\n', "jsonl_text", "text", 2),
        ("a.jsonl", "\n".join(json.dumps(r) for r in ALPACA).encode(), "alpaca", "prompt_completion", 2),
        ("a.json", json.dumps(ALPACA, indent=2).encode(), "alpaca", "prompt_completion", 2),
        ("t.json", json.dumps([{"text": "x"}]).encode(), "jsonl_text", "text", 1),
    ],
)
def test_recognized_formats(
    client: TestClient, filename: str, content: bytes, fmt: str, shape: str, count: int
) -> None:
    res = _upload(client, filename, content)
    assert res.status_code == 201, res.text
    body = res.json()
    assert (body["format"], body["shape"], body["record_count"]) == (fmt, shape, count)
    assert body["size_bytes"] == len(content)
    import hashlib

    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    preview = client.get(f"/api/datasets/{body['id']}/preview").json()
    assert len(preview["rows"]) == count
    if shape == "prompt_completion":
        assert preview["rows"][1] == {"prompt": "Add\n\n1+1", "completion": "2"}


@pytest.mark.parametrize(
    ("filename", "content", "needle"),
    [
        ("empty.txt", b"", "empty"),
        ("blank.jsonl", b"\n\n", "empty"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', "line 2: invalid JSON"),
        (
            "missing.jsonl",
            b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
            "line 2: field 'output': missing",
        ),
        ("type.jsonl", b'{"text": "a"}\n{"text": 5}\n', "line 2: field 'text': expected a string"),
        ("unknown.jsonl", b'{"foo": 1}\n', "line 1: records need a 'text' field"),
        ("latin1.txt", "caf\u00e9\n".encode("latin-1"), "line 1: not UTF-8"),
        ("arr.json", b'[\n {"instruction": "a", "output": "b"},\n {"instruction": "a", "output": 3}\n]', "line 3"),
        ("obj.json", b'{"instruction": "a"}', "expected a JSON array"),
        ("binary.jsonl", bytes(range(256)) * 4, "line 1: invalid JSON"),
        ("emptyout.jsonl", b'{"instruction": "a", "output": "  "}\n', "field 'output': empty"),
    ],
)
def test_malformed_files_are_refused_and_nothing_is_stored(
    client: TestClient, app_env: dict[str, str], filename: str, content: bytes, needle: str
) -> None:
    res = _upload(client, filename, content)
    assert res.status_code == 422, res.text
    assert needle in res.json()["detail"]
    assert client.get("/api/datasets").json()["items"] == []
    data_dir = Path(app_env["STUDIO_DATA_DIR"])
    assert not list((data_dir / "datasets").rglob("*")) if (data_dir / "datasets").exists() else True
    assert not list((data_dir / "tmp").glob("*"))


def test_unsupported_file_type_is_415_listing_what_is_accepted(client: TestClient) -> None:
    res = _upload(client, "binary.bin", bytes(range(256)) * 4)
    assert res.status_code == 415, res.text
    assert "accepted are .txt, .md, .json, .jsonl, .csv, .tsv and .parquet" in res.json()["detail"]
    assert client.get("/api/datasets").json()["items"] == []


def test_path_traversal_filename_is_neutralized(client: TestClient, app_env: dict[str, str]) -> None:
    res = _upload(client, "../../etc/evil.txt", b"hello\n")
    assert res.status_code == 201
    assert res.json()["filename"] == "evil.txt"
    stored = list((Path(app_env["STUDIO_DATA_DIR"]) / "datasets").rglob("*evil.txt"))
    assert len(stored) == 1


def test_datasets_are_private_to_their_owner(client: TestClient) -> None:
    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope

    ds = _upload(client, "a.txt", b"x\n").json()
    with session_scope() as s:
        other = issue_token(s, user=create_user(s, email="b@example.com", password="password123"), kind="api")
    headers = {"Authorization": f"Bearer {other}"}
    assert client.get(f"/api/datasets/{ds['id']}", headers=headers).status_code == 404
    assert client.get("/api/datasets", headers=headers).json()["items"] == []


def test_delete_dataset(client: TestClient) -> None:
    ds = _upload(client, "a.txt", b"x\n").json()
    assert client.delete(f"/api/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/api/datasets/{ds['id']}").status_code == 404


def test_fixture_files_are_recognized(client: TestClient) -> None:
    text = _upload(client, "tiny.txt", (FIXTURES / "tiny.txt").read_bytes()).json()
    assert text["format"] == "text" and text["record_count"] == 120
    alpaca = _upload(client, "alpaca_small.json", (FIXTURES / "alpaca_small.json").read_bytes()).json()
    assert alpaca["format"] == "alpaca" and alpaca["record_count"] == 36


def test_layout_text_on_json_lines_reads_its_text_field(client: TestClient) -> None:
    """Layout 'text' given for a .jsonl (not a raw text file) reads like 'jsonl_text': preview works too."""
    res = client.post(
        "/api/datasets",
        files={"file": ("t.jsonl", io.BytesIO(b'{"text": "a"}\n{"text": "b"}\n'))},
        data={"options": json.dumps({"layout": "text"})},
    )
    assert res.status_code == 201, res.text
    preview = client.get(f"/api/datasets/{res.json()['id']}/preview")
    assert preview.status_code == 200, preview.text
    assert [r["text"] for r in preview.json()["rows"]] == ["a", "b"]


def test_a_json_object_with_a_non_string_key_is_refused(client: TestClient) -> None:
    res = _upload(client, "w.json", b'{1: [{"text": "a"}]}')
    assert res.status_code == 422 and "string key" in res.json()["detail"], res.text


def test_preview_of_a_whole_file_document_reads_only_its_head(tmp_path: Path) -> None:
    from backend.dataset.formats import read_records
    from backend.dataset.formats.text import PREVIEW_CHARS

    big = tmp_path / "book.txt"
    big.write_text("a line of the book\n" * 50_000)  # about 1 MB, one document
    (whole,) = read_records(big, "book.txt", {"text_split": "file"})
    (head,) = read_records(big, "book.txt", {"text_split": "file"}, head_only=True)
    assert len(whole["text"]) > 900_000
    assert PREVIEW_CHARS <= len(head["text"]) < PREVIEW_CHARS + 100 and whole["text"].startswith(head["text"])
