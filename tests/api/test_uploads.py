"""Resumable chunked uploads: chunks in order, resume after a drop, validation on complete, owners only."""

import hashlib
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

ALPACA = "".join(
    json.dumps({"instruction": f"Add {i} and {i}", "input": "", "output": str(2 * i)}) + "\n" for i in range(300)
).encode()


def _start(client: TestClient, content: bytes, filename: str = "a.jsonl", **extra: Any) -> dict[str, Any]:
    res = client.post("/api/uploads", json={"filename": filename, "size": len(content), **extra})
    assert res.status_code == 201, res.text
    body: dict[str, Any] = res.json()
    assert body["received_bytes"] == 0 and body["chunk_size"] > 0
    return body


def _put(client: TestClient, upload_id: str, content: bytes, start: int, end: int, **kw: Any) -> Any:
    headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(content)}", **kw.pop("headers", {})}
    return client.put(f"/api/uploads/{upload_id}", content=content[start:end], headers=headers, **kw)


def _cuts(size: int, parts: int) -> list[tuple[int, int]]:
    step = -(-size // parts)
    return [(i, min(i + step, size)) for i in range(0, size, step)]


def _stored_files(data_dir: Path) -> list[Path]:
    return [p for sub in ("datasets", "tmp", "uploads") for p in (data_dir / sub).rglob("*") if p.is_file()]


def test_three_chunks_then_complete(client: TestClient, app_env: dict[str, str]) -> None:
    up = _start(client, ALPACA, name="sums")
    for start, end in _cuts(len(ALPACA), 3):
        res = _put(client, up["id"], ALPACA, start, end)
        assert res.status_code == 200, res.text
        assert res.json()["received_bytes"] == end
    assert client.get(f"/api/uploads/{up['id']}").json()["received_bytes"] == len(ALPACA)
    res = client.post(f"/api/uploads/{up['id']}/complete")
    assert res.status_code == 201, res.text
    ds = res.json()
    assert (ds["name"], ds["shape"], ds["record_count"]) == ("sums", "prompt_completion", 300)
    assert ds["sha256"] == hashlib.sha256(ALPACA).hexdigest() and ds["size_bytes"] == len(ALPACA)
    # The upload is consumed: no row, no part file.
    assert client.get(f"/api/uploads/{up['id']}").status_code == 404
    assert not list((Path(app_env["STUDIO_DATA_DIR"]) / "uploads").iterdir())


def test_a_chunk_must_start_at_the_resume_point(client: TestClient) -> None:
    up = _start(client, ALPACA)
    assert _put(client, up["id"], ALPACA, 0, 1000).status_code == 200
    for start in (0, 500, 1001):  # a repeat, an overlap, a gap
        res = _put(client, up["id"], ALPACA, start, start + 100)
        assert res.status_code == 409, res.text
        assert res.json()["received_bytes"] == 1000
    assert _put(client, up["id"], ALPACA, 1000, len(ALPACA)).status_code == 200


def test_incomplete_upload_cannot_complete(client: TestClient) -> None:
    up = _start(client, ALPACA)
    _put(client, up["id"], ALPACA, 0, 10)
    res = client.post(f"/api/uploads/{up['id']}/complete")
    assert res.status_code == 409 and res.json()["received_bytes"] == 10


def _raw_put(client: TestClient, upload_id: str, content: bytes, start: int, end: int, receive: Any) -> list[Any]:
    """PUT a chunk straight into the ASGI app, its body delivered by `receive`; returns the statuses sent
    (or the exception's name), so a test controls when the body arrives, stalls or drops."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": f"/api/uploads/{upload_id}",
        "raw_path": f"/api/uploads/{upload_id}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", client.headers["Authorization"].encode()),
            (b"content-range", f"bytes {start}-{end - 1}/{len(content)}".encode()),
            (b"content-length", str(end - start).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    statuses: list[Any] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def call() -> None:
        try:
            await client.app(scope, receive, send)  # type: ignore[arg-type]
        except Exception as exc:
            statuses.append(type(exc).__name__)

    anyio.run(call)
    return statuses


def _dropped_put(client: TestClient, upload_id: str, content: bytes, start: int, end: int, sent: int) -> None:
    """PUT a chunk whose connection drops after `sent` bytes: the ASGI app sees http.disconnect mid-body."""
    messages = [
        {"type": "http.request", "body": content[start : start + sent], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    # The request got as far as the body (no auth or offset refusal) and ended without accepting it.
    assert _raw_put(client, upload_id, content, start, end, receive) == [400]


def _stalled_put(client: TestClient, upload_id: str, content: bytes, during: Any) -> list[Any]:
    """PUT the whole file as one chunk whose body stalls halfway; `during()` runs (in another thread) meanwhile."""
    half = len(content) // 2
    arrived, resume = threading.Event(), threading.Event()
    pieces = [content[:half], content[half:]]

    async def receive() -> dict[str, Any]:
        if len(pieces) == 1:
            arrived.set()
            await anyio.to_thread.run_sync(resume.wait)
        return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}

    result: list[Any] = []
    writer = threading.Thread(
        target=lambda: result.extend(_raw_put(client, upload_id, content, 0, len(content), receive))
    )
    writer.start()
    assert arrived.wait(10)
    try:
        during()
    finally:
        resume.set()
        writer.join(10)
    return result


def test_resume_after_a_dropped_connection(client: TestClient, app_env: dict[str, str]) -> None:
    up = _start(client, ALPACA)
    (a, b), (_, c) = _cuts(len(ALPACA), 2)
    assert _put(client, up["id"], ALPACA, a, b).status_code == 200
    _dropped_put(client, up["id"], ALPACA, b, c, sent=1000)
    # The half-received chunk is dropped: the client asks where to resume and sends the rest.
    resume = client.get(f"/api/uploads/{up['id']}").json()["received_bytes"]
    assert resume == b
    part = Path(app_env["STUDIO_DATA_DIR"]) / "uploads" / f"{up['id']}.part"
    assert part.stat().st_size == b
    assert _put(client, up["id"], ALPACA, resume, c).status_code == 200
    res = client.post(f"/api/uploads/{up['id']}/complete")
    assert res.status_code == 201 and res.json()["sha256"] == hashlib.sha256(ALPACA).hexdigest()


def test_body_must_match_its_content_range(client: TestClient) -> None:
    up = _start(client, ALPACA)
    short = {"Content-Range": f"bytes 0-99/{len(ALPACA)}"}
    res = client.put(f"/api/uploads/{up['id']}", content=ALPACA[:50], headers=short)
    assert res.status_code == 422 and "50 bytes" in res.text
    res = client.put(f"/api/uploads/{up['id']}", content=ALPACA[:150], headers=short)
    assert res.status_code == 422 and "longer" in res.text
    for bad in ("bytes 0-9/5", "bytes 5-2/" + str(len(ALPACA)), "items 0-9/10", f"bytes 0-9/{len(ALPACA) + 1}"):
        res = client.put(f"/api/uploads/{up['id']}", content=b"x" * 10, headers={"Content-Range": bad})
        assert res.status_code == 422, (bad, res.text)
    assert client.put(f"/api/uploads/{up['id']}", content=b"x").status_code == 422  # no Content-Range
    assert client.get(f"/api/uploads/{up['id']}").json()["received_bytes"] == 0


def test_bad_file_on_complete_is_a_422_and_nothing_is_stored(client: TestClient, app_env: dict[str, str]) -> None:
    bad = ALPACA + b'{"instruction": "x", "output": 5}\n'
    up = _start(client, bad)
    for start, end in _cuts(len(bad), 3):
        assert _put(client, up["id"], bad, start, end).status_code == 200
    res = client.post(f"/api/uploads/{up['id']}/complete")
    assert res.status_code == 422, res.text
    assert "line 301" in res.text and "output" in res.text
    assert client.get("/api/datasets").json()["items"] == []
    assert _stored_files(Path(app_env["STUDIO_DATA_DIR"])) == []
    # The refused upload is gone: a new attempt starts a new upload.
    assert client.get(f"/api/uploads/{up['id']}").status_code == 404


def test_uploads_are_private_to_their_owner(client: TestClient) -> None:
    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope

    up = _start(client, ALPACA)
    with session_scope() as s:
        admin = issue_token(
            s, user=create_user(s, email="root@example.com", password="password123", is_admin=True), kind="api"
        )
    other = {"Authorization": f"Bearer {admin}"}
    url = f"/api/uploads/{up['id']}"
    assert client.get(url, headers=other).status_code == 404
    assert _put(client, up["id"], ALPACA, 0, 100, headers=other).status_code == 404
    assert client.post(f"{url}/complete", headers=other).status_code == 404
    assert client.delete(url, headers=other).status_code == 404
    assert client.get(url).json()["received_bytes"] == 0
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404


def test_limits_odd_ids_and_stale_uploads(client: TestClient, app_env: dict[str, str]) -> None:
    from backend.db import Upload, session_scope, utcnow

    res = client.post("/api/uploads", json={"filename": "big.jsonl", "size": 3 * 1024**3})
    assert res.status_code == 413 and "limit" in res.text
    assert client.post("/api/uploads", json={"filename": "", "size": 1}).status_code == 422
    assert client.get("/api/uploads/../../etc").status_code == 404
    assert client.get("/api/uploads/not-hex").status_code == 422
    old = _start(client, ALPACA)
    with session_scope() as s:
        row = s.get(Upload, old["id"])
        assert row is not None
        row.updated_at = utcnow() - timedelta(days=2)
    _start(client, ALPACA)  # starting an upload sweeps the ones idle for a day
    assert client.get(f"/api/uploads/{old['id']}").status_code == 404
    assert not (Path(app_env["STUDIO_DATA_DIR"]) / "uploads" / f"{old['id']}.part").exists()


def test_filename_is_sanitized(client: TestClient) -> None:
    up = _start(client, b"hello\n", filename="../../etc/passwd.txt")
    assert up["filename"] == "passwd.txt"
    _put(client, up["id"], b"hello\n", 0, 6)
    ds = client.post(f"/api/uploads/{up['id']}/complete").json()
    assert ds["filename"] == "passwd.txt"


@pytest.mark.parametrize("parents", [0, 2])
def test_versions_list_the_whole_lineage(client: TestClient, parents: int) -> None:
    from backend.db import Dataset, session_scope

    up = _start(client, b"hello\n", filename="t.txt")
    _put(client, up["id"], b"hello\n", 0, 6)
    first = client.post(f"/api/uploads/{up['id']}/complete").json()
    ids = [first["id"]]
    with session_scope() as s:
        base = s.get(Dataset, first["id"])
        assert base is not None
        for n in range(parents):
            child = Dataset(
                **{c: getattr(base, c) for c in ("owner_id", "name", "filename", "path", "size_bytes", "sha256")},
                **{"format": base.format, "shape": base.shape, "record_count": base.record_count},
                parent_id=ids[-1],
                version=n + 2,
                note=f"fix {n + 1}",
            )
            s.add(child)
            s.flush()
            ids.append(child.id)
    for ds_id in ids:
        items = client.get(f"/api/datasets/{ds_id}/versions").json()["items"]
        assert [d["id"] for d in items] == ids
    assert client.get("/api/datasets/999999/versions").status_code == 404


def test_one_writer_at_a_time_and_removal_mid_chunk(client: TestClient) -> None:
    up = _start(client, ALPACA)
    url = f"/api/uploads/{up['id']}"

    def second_writer() -> None:
        res = _put(client, up["id"], ALPACA, 0, 100)
        assert res.status_code == 409 and "another chunk" in res.text, res.text
        res = client.post(f"{url}/complete")
        assert res.status_code == 409, res.text

    assert _stalled_put(client, up["id"], ALPACA, second_writer) == [200]
    assert client.get(url).json()["received_bytes"] == len(ALPACA)

    # Deleted while a chunk is arriving: the writer finds nothing to advance (a 409, never a 500).
    again = _start(client, ALPACA)
    deleted = _stalled_put(client, again["id"], ALPACA, lambda: client.delete(f"/api/uploads/{again['id']}"))
    assert deleted == [409], deleted
    assert client.get(f"/api/uploads/{again['id']}").status_code == 404


def _owner_session_chunk(session: Any, upload_id: str, content: bytes, start: int, end: int) -> dict[str, Any]:
    """`write_chunk` as the route calls it, in a session the test keeps open afterwards."""
    from sqlalchemy import select

    from backend.dataset.upload import write_chunk
    from backend.db import User

    user = session.scalars(select(User).where(User.email == "owner@example.com")).one()

    async def body() -> Any:
        yield content[start:end]

    async def send() -> dict[str, Any]:
        return await write_chunk(
            session,
            user=user,
            upload_id=upload_id,
            content_range=f"bytes {start}-{end - 1}/{len(content)}",
            body=body(),
        )

    return anyio.run(send)


def test_the_request_session_never_writes_the_offset_back(client: TestClient) -> None:
    """Between a chunk's commit and the end of its request, another chunk lands or the upload goes: the
    request's final commit must neither move the offset back nor fail on a deleted row."""
    from backend.db import session_scope

    up = _start(client, ALPACA)
    with session_scope() as session:
        values = _owner_session_chunk(session, up["id"], ALPACA, 0, 100)
        assert values["received_bytes"] == 100 and values["id"] == up["id"]
        assert _put(client, up["id"], ALPACA, 100, 200).status_code == 200  # the next chunk, in the gap
    assert client.get(f"/api/uploads/{up['id']}").json()["received_bytes"] == 200

    gone = _start(client, ALPACA)
    with session_scope() as session:  # would raise StaleDataError on commit if the row were written back
        _owner_session_chunk(session, gone["id"], ALPACA, 0, 100)
        assert client.delete(f"/api/uploads/{gone['id']}").status_code == 204
    assert client.get(f"/api/uploads/{gone['id']}").status_code == 404


@pytest.mark.parametrize(
    ("filename", "options", "status", "field"),
    [
        ("data.exe", None, 415, "filename"),
        ("data", None, 415, "filename"),
        ("a.jsonl", {"layout": "nope"}, 422, "options.layout"),
        ("a.jsonl", {"colour": "red"}, 422, "options.colour"),
        ("a.jsonl", {"text_split": "line"}, 422, "options.text_split"),
        ("a.txt", {"quoting": "none"}, 422, "options.quoting"),
        ("a.txt.gz", {"shape": "messages"}, 422, "options"),
    ],
)
def test_a_bad_type_or_options_is_refused_before_any_byte_is_sent(
    client: TestClient, app_env: dict[str, str], filename: str, options: Any, status: int, field: str
) -> None:
    res = client.post("/api/uploads", json={"filename": filename, "size": 10, "options": options})
    assert res.status_code == status, res.text
    assert res.json()["field"] == field, res.text
    if status == 415:
        assert "accepted are" in res.json()["detail"]
    assert not list((Path(app_env["STUDIO_DATA_DIR"]) / "uploads").glob("*.part"))
    ok = client.post("/api/uploads", json={"filename": "a.csv.gz", "size": 10, "options": {"delimiter": ";"}})
    assert ok.status_code == 201, ok.text
