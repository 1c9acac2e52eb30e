"""The web app on S3 storage (moto's server over HTTP): chunked uploads land in the bucket part by part and are
validated by streaming them from it, previews stream, downloads stream or redirect to a presigned URL, deletes
reach the bucket; the data folder gets nothing but the database (and the cache's empty lock files)."""

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient

from tests.s3 import CREDENTIALS, bucket_keys, make_bucket, moto_s3

MiB = 1024 * 1024
BUCKET = "studio-api"
# A JSON Lines file just over two 5 MiB parts: alpaca records of ~100 bytes.
RECORD = {"instruction": "Add the two numbers " + "x" * 40, "input": "", "output": "4"}
BIG = ("".join(json.dumps({**RECORD, "output": str(i)}) + "\n" for i in range(110_000))).encode()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        make_bucket(endpoint, BUCKET)
        yield endpoint


@pytest.fixture
def backend_env(backend_env: dict[str, str], s3_endpoint: str, tmp_path: Path) -> dict[str, str]:
    """The usual backends, with objects in the bucket under a prefix of this test's own."""
    prefix = f"t-{tmp_path.name}"
    return {
        **backend_env,
        "STUDIO_STORAGE_URL": f"s3://{BUCKET}/{prefix}",
        "STUDIO_S3_ENDPOINT_URL": s3_endpoint,
        **CREDENTIALS,
    }


def stored(env: dict[str, str]) -> list[str]:
    prefix = env["STUDIO_STORAGE_URL"].removeprefix(f"s3://{BUCKET}/") + "/"
    return [k.removeprefix(prefix) for k in bucket_keys(env["STUDIO_S3_ENDPOINT_URL"], BUCKET) if k.startswith(prefix)]


def unfinished_multiparts(env: dict[str, str]) -> list[Any]:
    """This test's unfinished multipart uploads (the bucket is shared by the session's tests, each its prefix)."""
    client = boto3.client("s3", endpoint_url=env["STUDIO_S3_ENDPOINT_URL"], region_name="us-east-1")
    prefix = env["STUDIO_STORAGE_URL"].removeprefix(f"s3://{BUCKET}/") + "/"
    return list(client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", []))


def data_files(env: dict[str, str]) -> list[str]:
    """Files under the data folder other than the database and empty lock files."""
    root = Path(env["STUDIO_DATA_DIR"])
    return [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("studio.db") and p.stat().st_size > 0
    ]


def put(client: TestClient, upload_id: str, content: bytes, start: int, end: int) -> Any:
    headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(content)}"}
    return client.put(f"/api/uploads/{upload_id}", content=content[start:end], headers=headers)


def test_chunked_upload_goes_to_the_bucket_part_by_part(
    client: TestClient, app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    up = client.post("/api/uploads", json={"filename": "big.jsonl", "size": len(BIG)}).json()
    assert put(client, up["id"], BIG, 0, 5 * MiB).status_code == 200
    # The part is in the bucket's multipart upload; nothing of it on this machine.
    assert len(unfinished_multiparts(app_env)) == 1 and data_files(app_env) == []
    # Whatever follows a non-final chunk under 5 MiB would be a part S3 refuses: refused before its body is read.
    res = put(client, up["id"], BIG, 5 * MiB, 6 * MiB)
    assert res.status_code == 422 and res.json()["field"] == "Content-Range"
    assert put(client, up["id"], BIG, 5 * MiB, 10 * MiB).status_code == 200
    assert put(client, up["id"], BIG, 10 * MiB, len(BIG)).status_code == 200
    res = client.post(f"/api/uploads/{up['id']}/complete")
    assert res.status_code == 201, res.text
    ds = res.json()
    assert ds["record_count"] == 110_000 and ds["sha256"] == hashlib.sha256(BIG).hexdigest()
    (key,) = stored(app_env)  # moved from uploads/<id> to its dataset key
    assert key.startswith("datasets/") and key.endswith(f"/{ds['sha256'][:16]}-big.jsonl")
    assert unfinished_multiparts(app_env) == [] and data_files(app_env) == []

    # The preview streams the object (no local copy either).
    res = client.get(f"/api/datasets/{ds['id']}/preview")
    assert res.status_code == 200 and '"completion": "0"' in json.dumps(res.json())
    assert data_files(app_env) == []
    assert client.delete(f"/api/datasets/{ds['id']}").status_code == 204
    assert stored(app_env) == []


def test_a_refused_file_leaves_nothing_in_the_bucket(client: TestClient, app_env: dict[str, str]) -> None:
    bad = b'{"instruction": "a", "output": "b"}\n{not json\n'
    up = client.post("/api/uploads", json={"filename": "bad.jsonl", "size": len(bad)}).json()
    assert put(client, up["id"], bad, 0, len(bad)).status_code == 200  # the last chunk may be small
    res = client.post(f"/api/uploads/{up['id']}/complete")
    assert res.status_code == 422 and "line 2" in res.json()["detail"]
    assert stored(app_env) == [] and unfinished_multiparts(app_env) == []
    # An abandoned upload's parts go with it.
    other = client.post("/api/uploads", json={"filename": "a.jsonl", "size": len(BIG)}).json()
    assert put(client, other["id"], BIG, 0, 5 * MiB).status_code == 200
    assert client.delete(f"/api/uploads/{other['id']}").status_code == 204
    assert unfinished_multiparts(app_env) == []


def _artifact(app_env: dict[str, str]) -> tuple[int, bytes]:
    """A job of the client's user with an artifact stored in the bucket."""
    from backend.db import Artifact, Dataset, Job, User, session_scope
    from backend.storage import get_storage

    content = b"PK" + bytes(range(256)) * 5000
    with session_scope() as s:
        user = s.query(User).filter_by(email="owner@example.com").one()
        ds = Dataset(
            owner_id=user.id,
            name="d",
            filename="d.txt",
            path="datasets/x",
            size_bytes=1,
            sha256="0",
            format="text",
            shape="text",
            record_count=1,
        )
        s.add(ds)
        s.flush()
        job = Job(owner_id=user.id, name="j", kind="pretrain", objective="causal_lm", dataset_id=ds.id)
        s.add(job)
        s.flush()
        key = f"jobs/{job.id}/model.zip"
        s.add(
            Artifact(job_id=job.id, owner_id=user.id, name="model.zip", path=key, size_bytes=len(content), sha256="0")
        )
        job_id = job.id
    get_storage().put_stream(key, io.BytesIO(content))
    return job_id, content


def test_downloads_stream_or_redirect_to_a_presigned_url(
    client: TestClient, app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, content = _artifact(app_env)
    res = client.get(f"/api/jobs/{job_id}/artifacts/model.zip")
    assert res.status_code == 200 and res.content == content
    assert res.headers["content-length"] == str(len(content)) and "model.zip" in res.headers["content-disposition"]

    monkeypatch.setenv("STUDIO_S3_PRESIGNED_DOWNLOADS", "true")  # settings are read per environment
    res = client.get(f"/api/jobs/{job_id}/artifacts/model.zip", follow_redirects=False)
    assert res.status_code == 307
    direct = httpx.get(res.headers["location"])  # the browser's second request, to the bucket itself
    assert direct.status_code == 200 and direct.content == content


def test_a_model_directory_registered_here_is_copied_to_the_bucket(
    client: TestClient, app_env: dict[str, str], tmp_path: Path
) -> None:
    from backend.db import User, session_scope
    from backend.model.service import register_model
    from tests.api.test_models import model_files

    directory = tmp_path / "hf-model"
    directory.mkdir()
    for name, data in model_files().items():
        (directory / name).write_bytes(data)
    with session_scope() as s:
        user = s.query(User).filter_by(email="owner@example.com").one()
        model_id = register_model(s, owner_id=user.id, path=directory, name="here").id
    # Other machines read it from the bucket; the page reads its listing and config from there.
    assert sorted(stored(app_env)) == [f"models/{model_id}/{n}" for n in sorted(model_files())]
    detail = client.get(f"/api/models/{model_id}/detail").json()
    assert {f["name"] for f in detail["files"]} == set(model_files()) and detail["config"] is not None
    assert client.delete(f"/api/models/{model_id}").status_code == 204
    assert stored(app_env) == [] and (directory / "config.json").is_file()  # the directory itself stays


def _upload_row(upload_id: str, **values: Any) -> None:
    from sqlalchemy import update

    from backend.db import Upload, session_scope

    with session_scope() as s:
        s.execute(update(Upload).where(Upload.id == upload_id).values(**values))


def test_uploads_that_cannot_finish_say_so_and_leave_nothing(client: TestClient, app_env: dict[str, str]) -> None:
    from backend.dataset import upload_parts
    from backend.db import Upload, session_scope

    small = b'{"text": "hello"}\n'
    # A `complete` that joined the parts, then failed to commit: the row stays, with an object under uploads/.
    up = client.post("/api/uploads", json={"filename": "a.jsonl", "size": len(small)}).json()
    assert put(client, up["id"], small, 0, len(small)).status_code == 200
    with session_scope() as s:
        row = s.get(Upload, up["id"])
        assert row is not None
        upload_parts.finish_parts(dict(row.options), up["id"], len(small))
    assert stored(app_env) == [f"uploads/{up['id']}"]
    assert client.delete(f"/api/uploads/{up['id']}").status_code == 204
    assert stored(app_env) == [] and unfinished_multiparts(app_env) == []

    # Stored parts that do not add up to the bytes the row counts are never joined into a dataset.
    up = client.post("/api/uploads", json={"filename": "b.jsonl", "size": len(BIG)}).json()
    assert put(client, up["id"], BIG, 0, 5 * MiB).status_code == 200
    _upload_row(up["id"], received_bytes=len(BIG))
    res = client.post(f"/api/uploads/{up['id']}/complete")
    assert res.status_code == 409 and "restart the upload" in res.json()["detail"]
    assert client.delete(f"/api/uploads/{up['id']}").status_code == 204

    # An upload started before storage moved to S3 has no multipart upload: a 409, not a KeyError.
    up = client.post("/api/uploads", json={"filename": "c.jsonl", "size": len(small)}).json()
    _upload_row(up["id"], options={})
    res = put(client, up["id"], small, 0, len(small))
    assert res.status_code == 409 and "restart the upload" in res.json()["detail"]
    assert stored(app_env) == []


def test_a_model_registered_outside_the_data_folder_before_keys_reads_as_missing(
    client: TestClient, app_env: dict[str, str]
) -> None:
    from backend.db import Model, User, session_scope

    data = b'{"text": "hello"}\n'
    up = client.post("/api/uploads", json={"filename": "d.jsonl", "size": len(data)}).json()
    assert put(client, up["id"], data, 0, len(data)).status_code == 200
    ds = client.post(f"/api/uploads/{up['id']}/complete").json()
    with session_scope() as s:
        user = s.query(User).filter_by(email="owner@example.com").one()
        row = Model(owner_id=user.id, name="legacy", source="local", path="/srv/models/legacy")
        s.add(row)
        s.flush()
        model_id = row.id
    assert client.get(f"/datasets/{ds['id']}").status_code == 200  # lists every model's chat template
    detail = client.get(f"/api/models/{model_id}/detail")
    assert detail.status_code == 200 and detail.json()["files"] == []
