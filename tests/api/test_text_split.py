"""Text files: the split into records is chosen from the file's head unless the options say, and an over-long
record lowers the confidence with the reason (a file of one document per line once became one record "at
100% confidence")."""

import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.dataset.formats import summarize
from backend.dataset.formats.limits import Limits
from backend.dataset.formats.source import Source
from backend.dataset.formats.text import choose_split

LINES = "".join(f"Sentence number {i} of the corpus.\n" for i in range(50)).encode()


def _post(client: TestClient, url: str, name: str, content: bytes, options: dict[str, Any] | None = None) -> Any:
    data = {"options": json.dumps(options)} if options else {}
    res = client.post(url, files={"file": (name, io.BytesIO(content))}, data=data)
    assert res.status_code in (200, 201), res.text
    return res.json()


def test_lines_without_blank_lines_are_one_record_each(client: TestClient) -> None:
    found = _post(client, "/api/datasets/inspect", "corpus.txt", LINES)
    assert (found["record_count"], found["options"]["text_split"], found["confidence"]) == (50, "line", 1.0)
    assert "no blank line between its 50 lines" in found["notes"][0]

    ds = _post(client, "/api/datasets", "corpus.txt", LINES)
    assert (ds["record_count"], ds["options"]["text_split"]) == (50, "line")
    rows = client.get(f"/api/datasets/{ds['id']}/preview?rows=3").json()["rows"]
    assert rows == [{"text": f"Sentence number {i} of the corpus."} for i in range(3)]


def test_an_explicit_split_wins(client: TestClient) -> None:
    whole = _post(client, "/api/datasets", "corpus.txt", LINES, {"text_split": "file"})
    assert (whole["record_count"], whole["options"]["text_split"], whole["confidence"]) == (1, "file", 1.0)
    blocks = _post(client, "/api/datasets/inspect", "corpus.txt", LINES, {"text_split": "paragraph"})
    assert (blocks["record_count"], blocks["notes"]) == (1, [])


def test_an_over_long_record_lowers_the_confidence_and_says_why(client: TestClient) -> None:
    # Three documents, the second over long_record_bytes (64 KB by default): 1 of 3 is suspect.
    content = b"short one\n\n" + b"word " * 20_000 + b"\n\nshort two\n"
    found = _post(client, "/api/datasets/inspect", "mixed.txt", content)
    assert (found["record_count"], found["options"]["text_split"]) == (3, "paragraph")
    assert found["confidence"] == 0.6  # 0.9 x the 2 of 3 records under the limit
    why = found["notes"][-1]
    assert "1 of 3 records are over long_record_bytes=65,536 (the longest 100,001 bytes)" in why
    assert "text_split 'paragraph'" in why
    assert found["warnings"][0]["code"] == "split_doubt" and found["warnings"][0]["message"] == why

    ds = _post(client, "/api/datasets", "mixed.txt", content)
    assert ds["confidence"] == 0.6 and ds["warnings"][0]["code"] == "split_doubt"
    page = client.get(f"/datasets/{ds['id']}").text
    assert 'id="dataset-confidence">60%' in page and "is text_split &#39;paragraph&#39; right" in page


def test_one_giant_line_is_one_record_with_little_confidence(client: TestClient) -> None:
    found = _post(client, "/api/datasets/inspect", "one.txt", b"x" * 70_000 + b"\n")
    assert (found["record_count"], found["confidence"]) == (1, 0.1)


@pytest.mark.parametrize(
    ("content", "split"),
    [
        (b"a\nb\n\nc\n", "paragraph"),
        (b"\n\na\nb\nc\n\n", "line"),  # blank lines before the first and after the last separate nothing
        (b"only one line\n", "paragraph"),
        (b"a\r\nb\r\n", "line"),
    ],
)
def test_choose_split(tmp_path: Path, content: bytes, split: str) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    assert choose_split(Source(path, "f.txt", Limits()))[0] == split


def test_summarize_reads_a_gzipped_corpus_per_line(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress(LINES))
    summary = summarize(path, "corpus.txt.gz", limits=Limits())
    assert (summary.record_count, summary.options["text_split"], summary.error_count) == (50, "line", 0)
