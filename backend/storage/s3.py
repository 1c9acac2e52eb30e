"""Objects in an S3-compatible bucket (AWS S3, MinIO, ...) through boto3, below an optional key prefix.

Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance
role); STUDIO_S3_ENDPOINT_URL points it at MinIO or another S3-compatible server. An S3 object appears only
when its upload completes (a multipart upload included), so no reader ever sees half an object.
"""

import builtins
import hashlib
import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from backend.storage.base import check_key, files_under

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

CHUNK = 1 << 20
MISSING = {"404", "NoSuchKey", "NotFound"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in MISSING


def _legacy(key: str) -> bool:
    """A row written before keys existed that names a folder outside the data directory (a model registered
    from the command line where it was): it is on the disk of the machine that registered it, never in the
    bucket, so on S3 it reads as missing (the model says to register it again) rather than as a bad key."""
    return key.startswith("/")


def _not_in_bucket(key: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{key} is a folder on the machine that registered it, not in the bucket: register the model again "
        "(studio models add) so that it is copied to the bucket"
    )


class _Body(io.RawIOBase):
    """A GET's streaming body as a raw stream, so io.BufferedReader can give it readline and buffering."""

    def __init__(self, body: Any) -> None:
        self.body, self.position = body, 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position  # what was read so far (the gzip bomb guard compares it with the output)

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        self.body.close()
        super().close()


class S3Storage:
    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str = "", region: str = "", public_endpoint_url: str = ""
    ) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        # Path-style addressing: MinIO and most S3-compatible servers serve buckets under the endpoint's path.
        config = Config(signature_version="s3v4", s3={"addressing_style": "path" if endpoint_url else "auto"})
        self.client: S3Client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
        )
        # A presigned URL's signature covers its host, so a browser that reaches the server under another name
        # (http://minio:9000 inside compose, https://s3.example.com outside) needs URLs signed for that name.
        # Signing is local: this client never sends a request.
        self.signer: S3Client = (
            boto3.client("s3", endpoint_url=public_endpoint_url, region_name=region or None, config=config)
            if public_endpoint_url
            else self.client
        )

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def _k(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _head(self, key: str) -> dict[str, Any]:
        if _legacy(key):
            raise _not_in_bucket(key)
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._k(key)))
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"no object {key}") from None
            raise

    def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        # upload_file switches to a multipart upload for big files and completes it only once every part is in.
        self.client.upload_file(str(source), self.bucket, self._k(key))
        if move:
            source.unlink()

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        counted = _Counting(stream)
        self.client.upload_fileobj(counted, self.bucket, self._k(key))  # type: ignore[arg-type]
        return counted.count

    def put_tree(self, prefix: str, source: Path, *, move: bool = False, last: tuple[str, ...] = ()) -> None:
        old = set(self.list(prefix))
        # An earlier tree's markers go first: while the new files replace the old ones one by one, no reader may
        # take the mix for a complete tree (a checkpoint written again after a resume from an older one).
        markers = sorted(k for k in old if k.rsplit("/", 1)[-1] in last)
        self._delete_keys(markers)
        old.difference_update(markers)
        files = list(files_under(source))
        files.sort(key=lambda item: item[1].name in last)  # stable: the markers go after everything else
        for rel, path in files:
            self.client.upload_file(str(path), self.bucket, self._k(f"{prefix}/{rel}"))
            old.discard(f"{prefix}/{rel}")
        self._delete_keys(sorted(old))  # files of an earlier tree under the same prefix
        if move:
            shutil.rmtree(source, ignore_errors=True)

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        if _legacy(key):
            raise _not_in_bucket(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"no object {key}") from None
            raise
        with io.BufferedReader(_Body(body), buffer_size=CHUNK) as stream:
            yield stream  # type: ignore[misc]

    def fetch(self, key: str, target: Path) -> None:
        if _legacy(key):
            raise _not_in_bucket(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{target.name}")
        try:
            self.client.download_file(self.bucket, self._k(key), str(tmp))
        except ClientError as exc:
            tmp.unlink(missing_ok=True)
            if _missing(exc):
                raise FileNotFoundError(f"no object {key}") from None
            raise
        tmp.replace(target)

    def fetch_tree(self, prefix: str, target: Path) -> int:
        keys = self.list(prefix)
        if not keys:
            raise _not_in_bucket(prefix) if _legacy(prefix) else FileNotFoundError(f"nothing stored under {prefix}")
        for key in keys:
            self.fetch(key, target / key.removeprefix(f"{prefix}/"))
        return len(keys)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def version(self, key: str, *, tree: bool = False) -> str:
        if not tree:
            head = self._head(key)
            return f"{head['ETag']}@{head['LastModified'].timestamp()}"
        objects = self._objects(prefix=key)
        listed = [f"{o['Key']} {o['ETag']} {o['Size']} {o['LastModified'].timestamp()}" for o in objects]
        if not listed:
            raise _not_in_bucket(key) if _legacy(key) else FileNotFoundError(f"nothing stored under {key}")
        return hashlib.sha256("\n".join(listed).encode()).hexdigest()

    def list(self, prefix: str) -> builtins.list[str]:
        return sorted(self.scan(prefix))

    def scan(self, prefix: str) -> dict[str, tuple[int, float]]:
        strip = f"{self.prefix}/" if self.prefix else ""
        return {
            obj["Key"].removeprefix(strip): (int(obj["Size"]), obj["LastModified"].timestamp())
            for obj in self._objects(prefix)
        }

    def _objects(self, prefix: str) -> Iterator[Any]:
        if _legacy(prefix):
            return  # never in the bucket
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._k(prefix) + "/")
        for page in pages:
            yield from page.get("Contents", [])

    def move(self, source: str, dest: str) -> None:
        # The managed copy switches to a multipart copy past 5 GB (a single CopyObject stops there).
        self.client.copy({"Bucket": self.bucket, "Key": self._k(source)}, self.bucket, self._k(dest))
        self.delete(source)

    def delete(self, key: str) -> None:
        if _legacy(key):
            return  # the folder stays on the disk it was registered on, as it does with local storage
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def _delete_keys(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._k(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})  # type: ignore[typeddict-item]

    def delete_prefix(self, prefix: str) -> None:
        self._delete_keys(self.list(prefix))

    def presigned_url(self, key: str, *, filename: str, expires_seconds: int = 3600) -> str | None:
        disposition = f"attachment; filename*=UTF-8''{quote(filename)}"
        return self.signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._k(key), "ResponseContentDisposition": disposition},
            ExpiresIn=expires_seconds,
        )

    def local_path(self, key: str) -> Path | None:
        return None

    def start_multipart(self, key: str) -> str:
        return self.client.create_multipart_upload(Bucket=self.bucket, Key=self._k(key))["UploadId"]

    def put_part(self, key: str, upload_id: str, number: int, data: bytes | BinaryIO) -> str:
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=self._k(key), UploadId=upload_id, PartNumber=number, Body=data
        )
        return answer["ETag"]

    def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self._k(key),
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]},
        )

    def list_parts(self, key: str, upload_id: str) -> builtins.list[tuple[int, str, int]]:
        parts: builtins.list[tuple[int, str, int]] = []
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=self._k(key), UploadId=upload_id
        )
        for page in pages:
            parts.extend((p["PartNumber"], p["ETag"], p["Size"]) for p in page.get("Parts", []))
        return sorted(parts)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._k(key), UploadId=upload_id)
        except ClientError as exc:
            if not _missing(exc) and exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise


class _Counting(io.RawIOBase):
    """A stream that counts what is read through it (upload_fileobj does not say how much it sent)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.count = stream, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data
