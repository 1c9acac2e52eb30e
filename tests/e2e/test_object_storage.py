"""The whole loop on S3 storage: upload, pretrain, fine-tune, download, export, with the objects in a bucket on
a real S3 endpoint over HTTP (moto's server, started here) and nothing in the local data folder but the cache.

The studio runs as in server mode (`studio api`, a training worker and an analysis worker, each a process of its
own); the database and the broker are SQLite files outside the data folder, so that whatever the processes write
under STUDIO_DATA_DIR is what storage and the cache wrote.
"""

import io
import sqlite3
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import OFFLINE
from tests.e2e.test_loop import PRETRAIN_HP, upload
from tests.s3 import CREDENTIALS, bucket_keys, make_bucket, moto_s3
from tests.support import StudioProcess

BUCKET = "studio-e2e"


def wait_export(client: httpx.Client, export_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export = client.get(f"/api/exports/{export_id}").json()
        if export["status"] in ("done", "failed"):
            return export
        time.sleep(0.5)
    raise TimeoutError(f"export {export_id} still {export['status']}")


@pytest.mark.slow
def test_whole_loop_on_s3_leaves_only_the_cache_locally(tmp_path: Path) -> None:
    data_dir, db_dir = tmp_path / "data", tmp_path / "db"
    db_dir.mkdir()
    with moto_s3() as endpoint:
        make_bucket(endpoint, BUCKET)
        env = {
            "STUDIO_DATA_DIR": str(data_dir),
            "STUDIO_DATABASE_URL": f"sqlite:///{db_dir / 'studio.db'}",
            "STUDIO_BROKER_URL": f"sqla+sqlite:///{db_dir / 'broker.db'}",
            "STUDIO_STORAGE_URL": f"s3://{BUCKET}/studio",
            "STUDIO_S3_ENDPOINT_URL": endpoint,
            **CREDENTIALS,
            **OFFLINE,
        }
        with StudioProcess(env, log_dir=tmp_path / "logs") as studio, studio.client() as client:
            text = upload(client, "tiny.txt")
            hp = {**PRETRAIN_HP, "max_steps": 20, "checkpoint_steps": 5}
            res = client.post(
                "/api/jobs",
                json={"kind": "pretrain", "architecture": "tiny", "dataset_id": text["id"], "hyperparameters": hp},
            )
            assert res.status_code == 201, res.text
            pt = studio.wait_job(client, res.json()["id"], ("succeeded", "failed", "cancelled"))
            assert pt["status"] == "succeeded", client.get(f"/api/jobs/{pt['id']}/events").json()
            # Checkpoints are listed from the bucket (each complete once its marker is stored); those the Trainer
            # rotated out (keep_checkpoints: 2) are gone from it too.
            checkpoints = client.get(f"/api/jobs/{pt['id']}/checkpoints").json()
            assert [c["name"] for c in checkpoints] == ["checkpoint-15", "checkpoint-20"] and checkpoints[0][
                "size_bytes"
            ]
            base = next(m for m in client.get("/api/models").json()["items"] if m["job_id"] == pt["id"])
            detail = client.get(f"/api/models/{base['id']}/detail").json()
            assert "config.json" in {f["name"] for f in detail["files"]} and detail["config"]["layers"]

            alpaca = upload(client, "alpaca_small.json")
            ft_body = {
                "kind": "finetune",
                "dataset_id": alpaca["id"],
                "base_model": str(base["id"]),
                "method": "lora",
                "objective": "sft",
                "hyperparameters": {
                    "max_steps": 6,
                    "learning_rate": 2e-3,
                    "batch_size": 4,
                    "max_length": 128,
                    "checkpoint_steps": 3,
                },
            }
            res = client.post("/api/jobs", json=ft_body)
            assert res.status_code == 201, res.text
            ft = studio.wait_job(client, res.json()["id"], ("succeeded", "failed", "cancelled"))
            assert ft["status"] == "succeeded", client.get(f"/api/jobs/{ft['id']}/events").json()

            # The download streams from the bucket through the API.
            res = client.get(f"/api/jobs/{ft['id']}/artifacts/adapter.zip")
            assert res.status_code == 200
            with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
                assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zf.namelist())

            # An export of a checkpoint: the worker reads it through its cache and stores the zip.
            res = client.post(f"/api/jobs/{ft['id']}/exports", json={"checkpoint": "checkpoint-3", "format": "merged"})
            assert res.status_code == 201, res.text
            export = wait_export(client, res.json()["id"])
            assert export["status"] == "done", export
            res = client.get(f"/api/jobs/{ft['id']}/artifacts/{export['artifact_name']}")
            assert res.status_code == 200
            with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
                assert "config.json" in zf.namelist()

        keys = bucket_keys(endpoint, BUCKET)
    stored = {k.removeprefix("studio/") for k in keys}
    assert f"jobs/{pt['id']}/checkpoints/checkpoint-15/COMPLETE" in stored
    assert not any(k.startswith(f"jobs/{pt['id']}/checkpoints/checkpoint-10/") for k in stored)
    assert {
        f"jobs/{pt['id']}/model/config.json",
        f"jobs/{pt['id']}/model.zip",
        f"jobs/{ft['id']}/adapter.zip",
    } <= stored
    assert any(k.startswith(f"jobs/{ft['id']}/exports/") and k.endswith(".zip") for k in stored)
    # Final folders are stored with their marker last (readers take no partial listing for the whole).
    assert {f"jobs/{pt['id']}/model/COMPLETE", f"jobs/{ft['id']}/adapter/COMPLETE"} <= stored
    # Each job's work folder went when the job ended, the export's zip once stored: no file is left in them.
    work = data_dir / "cache" / "work"
    assert [p for p in work.rglob("*") if p.is_file()] == []
    assert sum(k.startswith("datasets/") for k in stored) == 2
    # Nothing in the data folder but the cache; the rows name keys, not paths.
    assert sorted(p.name for p in data_dir.iterdir()) == ["cache"]
    with sqlite3.connect(db_dir / "studio.db") as db:
        paths = [row[0] for t in ("datasets", "models", "artifacts") for row in db.execute(f"SELECT path FROM {t}")]
    assert paths and all(p in stored or f"{p}/config.json" in stored for p in paths), paths
