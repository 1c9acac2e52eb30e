"""Both storage backends against one contract: the data directory (LocalStorage) and an S3 endpoint over HTTP
(moto in server mode, started here: MinIO cannot be installed on the test machines). Then the cache's bound."""

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.export.lifecycle import exports_dir, finish_export
from backend.playground.service import stored_kind
from backend.storage import Cache, LocalStorage, Storage, get_cache, get_storage, pinned, work_path
from backend.storage.base import BadKey, check_key
from backend.storage.s3 import S3Storage
from tests.s3 import CREDENTIALS, make_bucket, moto_s3
from workers.context import job_workspace

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp, moto_s3() as endpoint:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "data")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"b{tmp_path.name.lower().replace('_', '-')[-40:]}"
    make_bucket(endpoint, bucket)
    return S3Storage(bucket, "studio/prefix", endpoint_url=endpoint)


def test_keys_are_clean_relative_paths() -> None:
    assert check_key("datasets/1/ab-x.jsonl") == "datasets/1/ab-x.jsonl"
    for bad in ("", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b"):
        with pytest.raises(BadKey):
            check_key(bad)


def test_files_streams_and_listing(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"hello\nworld\n")
    storage.put_file("a/f.bin", source)
    assert source.exists()  # copied, not consumed
    assert storage.put_stream("a/b/g.txt", io.BytesIO(b"x" * 3000)) == 3000
    assert storage.exists("a/f.bin") and not storage.exists("a/missing") and not storage.exists("a")
    assert storage.size("a/b/g.txt") == 3000
    with storage.open("a/f.bin") as f:
        assert f.readline() == b"hello\n" and f.read() == b"world\n"
    assert storage.list("a") == ["a/b/g.txt", "a/f.bin"]
    assert set(storage.scan("a/b")) == {"a/b/g.txt"} and storage.scan("a/b")["a/b/g.txt"][0] == 3000
    assert storage.list("nothing") == []
    storage.fetch("a/f.bin", tmp_path / "copy" / "f.bin")
    assert (tmp_path / "copy" / "f.bin").read_bytes() == b"hello\nworld\n"
    moved = tmp_path / "moved.bin"
    moved.write_bytes(b"m")
    storage.put_file("a/m.bin", moved, move=True)
    assert not moved.exists() and storage.size("a/m.bin") == 1
    storage.move("a/f.bin", "c/moved.bin")
    assert not storage.exists("a/f.bin") and storage.size("c/moved.bin") == 12
    storage.move("c/moved.bin", "a/f.bin")
    storage.delete("a/f.bin")
    storage.delete("a/f.bin")  # a missing one is no error
    assert storage.list("a") == ["a/b/g.txt", "a/m.bin"]
    storage.delete_prefix("a")
    assert storage.list("a") == []


def test_missing_objects_raise_file_not_found(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        storage.size("no/such")
    with pytest.raises(FileNotFoundError), storage.open("no/such"):
        pass
    with pytest.raises(FileNotFoundError):
        storage.fetch("no/such", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError):
        storage.fetch_tree("no/such", tmp_path / "t")


def test_trees_replace_what_was_there(storage: Storage, tmp_path: Path) -> None:
    first = tmp_path / "first"
    (first / "sub").mkdir(parents=True)
    (first / "config.json").write_text("{}")
    (first / "old.bin").write_bytes(b"old")
    (first / "sub" / "COMPLETE").write_text("")
    storage.put_tree("models/7", first)
    assert storage.list("models/7") == ["models/7/config.json", "models/7/old.bin", "models/7/sub/COMPLETE"]
    second = tmp_path / "second"
    second.mkdir()
    (second / "config.json").write_text('{"a": 1}')
    storage.put_tree("models/7", second, move=True, last=("COMPLETE",))
    assert not second.exists()
    assert storage.list("models/7") == ["models/7/config.json"]
    assert storage.fetch_tree("models/7", tmp_path / "out") == 1
    assert (tmp_path / "out" / "config.json").read_text() == '{"a": 1}'


def test_multipart_upload_appears_only_when_complete(storage: Storage) -> None:
    upload = storage.start_multipart("datasets/1/big.jsonl")
    parts = [(1, storage.put_part("datasets/1/big.jsonl", upload, 1, b"a" * (5 * MiB)))]
    assert not storage.exists("datasets/1/big.jsonl")  # never half an object
    parts.append((2, storage.put_part("datasets/1/big.jsonl", upload, 2, b"b\n")))
    listed = storage.list_parts("datasets/1/big.jsonl", upload)
    assert [(n, size) for n, _, size in listed] == [(1, 5 * MiB), (2, 2)]
    assert [etag.strip('"') for _, etag, _ in listed] == [etag.strip('"') for _, etag in parts]
    storage.complete_multipart("datasets/1/big.jsonl", upload, parts)
    assert storage.size("datasets/1/big.jsonl") == 5 * MiB + 2
    with storage.open("datasets/1/big.jsonl") as f:
        f.read(5 * MiB - 1)
        assert f.read() == b"ab\n"
    aborted = storage.start_multipart("datasets/1/gone")
    storage.put_part("datasets/1/gone", aborted, 1, b"x")
    storage.abort_multipart("datasets/1/gone", aborted)
    assert not storage.exists("datasets/1/gone") and storage.list("datasets") == ["datasets/1/big.jsonl"]


def test_presigned_urls_download_over_http(storage: Storage) -> None:
    storage.put_stream("jobs/1/adapter.zip", io.BytesIO(b"PK zip"))
    url = storage.presigned_url("jobs/1/adapter.zip", filename="adapter.zip")
    if isinstance(storage, LocalStorage):
        assert url is None and storage.local_path("jobs/1/adapter.zip") == storage.root / "jobs/1/adapter.zip"
        return
    assert url is not None and storage.local_path("jobs/1/adapter.zip") is None
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"PK zip"
    assert "adapter.zip" in answer.headers["content-disposition"]


def test_cache_serves_local_objects_in_place_and_bounds_remote_copies(storage: Storage, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        storage.put_stream(f"d/{name}.bin", io.BytesIO(name.encode() * 400))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "w.safetensors").write_bytes(b"w" * 100)
    storage.put_tree("jobs/3/checkpoints/checkpoint-40", tree)
    cache = Cache(storage, tmp_path / "cache", max_bytes=1000)
    if isinstance(storage, LocalStorage):
        assert cache.file("d/a.bin") == storage.root / "d/a.bin"
        assert not (tmp_path / "cache").exists()  # nothing copied
        return
    a = cache.file("d/a.bin")
    assert a.read_bytes() == b"a" * 400 and a.name == "a.bin" and a.is_relative_to(tmp_path / "cache")
    folder = cache.tree("jobs/3/checkpoints/checkpoint-40")
    assert folder.name == "checkpoint-40" and (folder / "w.safetensors").read_bytes() == b"w" * 100
    cache.file("d/b.bin")
    stamps = tmp_path / "cache" / "stamps"
    for i, stamp in enumerate(sorted(stamps.iterdir(), key=lambda p: p.stat().st_mtime)):
        os.utime(stamp, (1000 + i, 1000 + i))  # a, tree, b in this order of use
    assert cache.file("d/a.bin") == a  # a hit: used now, so the tree is the least recently used
    cache.file("d/c.bin")  # 400 + 100 + 400 + 400 > 1000: the oldest go until it fits
    assert not folder.exists() and a.exists()
    assert sum(size for _, _, size in cache.entries()) <= 1000
    assert len(list((tmp_path / "cache" / "stamps").iterdir())) == 2  # the tree's and b's stamps went too
    storage.delete("d/a.bin")
    with pytest.raises(FileNotFoundError):
        cache.file("d/a.bin")  # every use asks for the version: a deleted object is not served from a copy


def test_versions_change_when_objects_are_written_again(storage: Storage, tmp_path: Path) -> None:
    storage.put_stream("d/a.bin", io.BytesIO(b"one"))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "w.bin").write_bytes(b"one")
    storage.put_tree("t", tree)
    file_v, tree_v = storage.version("d/a.bin"), storage.version("t", tree=True)
    assert storage.version("d/a.bin") == file_v and storage.version("t", tree=True) == tree_v  # stable
    storage.put_stream("d/a.bin", io.BytesIO(b"two"))  # the same size, other bytes
    (tree / "w.bin").write_bytes(b"two")
    storage.put_tree("t", tree)
    assert storage.version("d/a.bin") != file_v and storage.version("t", tree=True) != tree_v
    for missing in (lambda: storage.version("d/none"), lambda: storage.version("none", tree=True)):
        with pytest.raises(FileNotFoundError):
            missing()


@pytest.fixture
def s3(s3_endpoint: str, tmp_path: Path) -> S3Storage:
    bucket = f"c{tmp_path.name.lower().replace('_', '-')[-40:]}"
    make_bucket(s3_endpoint, bucket)
    return S3Storage(bucket, endpoint_url=s3_endpoint)


def test_cache_refetches_a_key_written_again(s3: S3Storage, tmp_path: Path) -> None:
    cache = Cache(s3, tmp_path / "cache", max_bytes=10 * MiB)
    s3.put_stream("models/1/config.json", io.BytesIO(b'{"v": 1}'))
    assert (cache.tree("models/1") / "config.json").read_bytes() == b'{"v": 1}'
    assert cache.tree("models/1") == cache.tree("models/1")  # a hit while unchanged
    # A model id reused (SQLite and S3), a checkpoint written again after a resume from an older one.
    s3.put_stream("models/1/config.json", io.BytesIO(b'{"v": 2}'))
    assert (cache.tree("models/1") / "config.json").read_bytes() == b'{"v": 2}'
    s3.put_stream("d/x", io.BytesIO(b"first"))
    assert cache.file("d/x").read_bytes() == b"first"
    s3.put_stream("d/x", io.BytesIO(b"other"))
    assert cache.file("d/x").read_bytes() == b"other"


def test_pinned_entries_are_not_evicted_while_in_use(s3: S3Storage, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        s3.put_stream(f"d/{name}", io.BytesIO(name.encode() * 600))
    cache = Cache(s3, tmp_path / "cache", max_bytes=1000)
    with pinned():
        a = cache.file("d/a")  # a job's base model: in use for the whole job
        with pinned():  # nested: joins the outer block
            cache.file("d/b")
        assert a.exists()  # b alone could not make room: a is pinned
        cache.file("d/c")
        assert a.exists() and cache.file("d/a") == a
    other = Cache(s3, tmp_path / "cache", max_bytes=1000)  # another process's view: the lock is per open file
    with pinned():
        c = other.file("d/c")
        cache.file("d/b")
        assert c.exists() and not a.exists()  # unpinned now: the least recently used goes


def test_s3_reads_legacy_absolute_keys_as_missing(s3: S3Storage, tmp_path: Path) -> None:
    legacy = str(tmp_path / "registered-model")  # a row written before keys, outside the data directory
    assert s3.list(legacy) == [] and s3.scan(legacy) == {} and not s3.exists(f"{legacy}/config.json")
    s3.delete_prefix(legacy)
    s3.delete(f"{legacy}/config.json")
    for read in (
        lambda: s3.fetch_tree(legacy, tmp_path / "t"),
        lambda: s3.size(f"{legacy}/config.json"),
        lambda: s3.version(legacy, tree=True),
        lambda: s3.fetch(f"{legacy}/config.json", tmp_path / "f"),
    ):
        with pytest.raises(FileNotFoundError, match="register the model again"):
            read()
    with pytest.raises(FileNotFoundError, match="register the model again"), s3.open(f"{legacy}/config.json"):
        pass
    with pytest.raises(BadKey):  # writing one is a bug
        s3.put_stream(f"{legacy}/x", io.BytesIO(b""))


def test_presigned_urls_name_the_public_endpoint(s3: S3Storage, s3_endpoint: str) -> None:
    s3.put_stream("jobs/1/a.zip", io.BytesIO(b"PK"))
    public = S3Storage(s3.bucket, endpoint_url=s3_endpoint, public_endpoint_url="https://s3.example.com")
    url = public.presigned_url("jobs/1/a.zip", filename="a.zip")
    assert url is not None and url.startswith(f"https://s3.example.com/{s3.bucket}/jobs/1/a.zip?")
    assert (s3.presigned_url("jobs/1/a.zip", filename="a.zip") or "").startswith(s3_endpoint)


# --- the configured storage (settings from the environment): workers' folders, listings the API trusts ---------


@pytest.fixture
def s3_settings(
    s3_endpoint: str, tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Storage]:
    """This test's studio on S3 (an SQLite database at head in its data folder): the configured storage."""
    bucket = f"e{tmp_path.name.lower().replace('_', '-')[-40:]}"
    make_bucket(s3_endpoint, bucket)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(sqlite_template, data / "studio.db")
    monkeypatch.setenv("STUDIO_DATA_DIR", str(data))
    monkeypatch.setenv("STUDIO_STORAGE_URL", f"s3://{bucket}/studio")
    monkeypatch.setenv("STUDIO_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("STUDIO_CACHE_MAX_BYTES", str(MiB))
    storage = get_storage()
    assert isinstance(storage, S3Storage)
    yield storage


def test_a_jobs_work_folder_goes_when_it_ends_with_remote_storage(s3_settings: S3Storage) -> None:
    work = work_path("jobs/5")
    (work / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (work / "adapter.zip").write_bytes(b"PK")  # left by an earlier run on this machine
    (work / "exports" / "3" / "attempt-1").mkdir(parents=True)  # an export running in another process
    for name in ("big", "other"):
        s3_settings.put_stream(f"models/{name}/w.safetensors", io.BytesIO(b"w" * (700 * 1024)))
    with pytest.raises(RuntimeError), job_workspace(5):
        assert sorted(p.name for p in work.iterdir()) == ["exports"]  # starts empty
        base = get_cache().tree("models/big")
        (work / "model").mkdir()
        (work / "model" / "w.safetensors").write_bytes(b"w")
        get_cache().tree("models/other")  # over the cache's 1 MiB: the base is in use, so it stays
        assert (base / "w.safetensors").is_file()
        raise RuntimeError("the job failed")  # however it ends
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == [
        "exports",
        "exports/3",
        "exports/3/attempt-1",
    ]
    shutil.rmtree(work / "exports")
    with job_workspace(5):
        pass
    assert not work.exists()


def test_a_jobs_folder_stays_with_local_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    work = work_path("jobs/5")
    assert work == tmp_path / "data" / "jobs" / "5"  # the stored folder itself
    (work / "adapter").mkdir(parents=True)
    with job_workspace(5):
        pass
    assert (work / "adapter").is_dir()


def test_a_final_folder_counts_once_its_marker_is_stored(s3_settings: S3Storage, tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    s3_settings.put_tree("jobs/7/adapter", folder)  # what a reader lists while the worker stores it
    assert stored_kind("jobs/7/adapter") is None
    (folder / "COMPLETE").write_text("{}")
    s3_settings.put_tree("jobs/7/adapter", folder, last=("COMPLETE",))
    assert stored_kind("jobs/7/adapter") == "adapter"


def test_an_export_zip_stored_after_its_lease_was_lost_is_deleted(s3_settings: S3Storage) -> None:
    archive = exports_dir(0) / "99" / "attempt-1" / "adapter.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"PK")
    assert not finish_export(99, archive)  # no running export 99 to finish: the reaper took it back
    assert not archive.exists() and s3_settings.list("jobs/0") == []
