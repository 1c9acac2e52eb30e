"""Model uploads: a zip of a Hugging Face directory (checked and extracted here, torch-free) or a .gguf file
(stored, then de-quantized by a worker). Refused files leave nothing behind.

Only safetensors weights are ever loaded: a pickled checkpoint (.bin, .pt, ...) can run code when unpickled,
so a zip holding one is refused outright rather than silently skipped.
"""

import shutil
import stat
import uuid
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.dataset.service import safe_filename

# The chunked-upload plumbing is shared with datasets: the same part files, lock and rows.
from backend.dataset.upload import begin, get_upload, remove_stale_uploads, take_received
from backend.db import Model, Upload, User
from backend.errors import Invalid, TooLarge, Unsupported
from backend.model.service import adopt_model_dir, create_import, import_key
from backend.storage import get_storage, join, scratch_dir

ACCEPTED = ".zip (a Hugging Face model directory: config.json, *.safetensors, tokenizer files) or .gguf"
# Formats that unpickle (or may) when loaded: refused wherever they sit in the zip.
PICKLED = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MAX_MEMBERS = 10_000
RATIO_FLOOR = 1024 * 1024  # tiny members (configs) compress well legitimately; only big ones count as bombs
GGUF_MAGIC = b"GGUF"
COPY_CHUNK = 1 << 20
UPLOAD_TARGET = "model"  # marks an Upload row as a model's (datasets complete theirs elsewhere)


def upload_kind(filename: str) -> str:
    """ "zip" or "gguf" from the file name; anything else is a 415 listing what is accepted."""
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix in (".zip", ".gguf"):
        return suffix[1:]
    raise Unsupported(f"{filename or 'the file'}: a model upload is {ACCEPTED}", field="file", accepted=ACCEPTED)


def _check_size(size: int) -> None:
    limit = get_settings().max_model_upload_bytes
    if size > limit:
        raise TooLarge(f"file is over the model upload limit of {limit} bytes", field="file", limit=limit)


def _temp_path(suffix: str = ".part") -> Path:
    return scratch_dir() / f"{uuid.uuid4().hex}{suffix}"


def import_stream(session: Session, *, user: User, source: BinaryIO, filename: str, name: str = "") -> Model:
    """Copy an uploaded file to disk in chunks (never whole in memory, within the size limit), then import it."""
    upload_kind(filename)  # a 415 before any byte is copied
    tmp = _temp_path()
    try:
        size = 0
        with tmp.open("wb") as out:
            while chunk := source.read(COPY_CHUNK):
                size += len(chunk)
                _check_size(size)
                out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return import_file(session, user=user, path=tmp, filename=filename, name=name)


def import_file(session: Session, *, user: User, path: Path, filename: str, name: str = "") -> Model:
    """Register an uploaded file: a zip is ready at once, a .gguf waits for a worker ("importing").

    `path` is consumed: moved into the studio's data or removed, valid or not."""
    try:
        kind = upload_kind(filename)
        _check_size(path.stat().st_size)
        stem = PurePosixPath(safe_filename(filename)).stem
        if kind == "zip":
            return _import_zip(session, user=user, path=path, filename=filename, name=name or stem)
        return _import_gguf(session, user=user, path=path, filename=filename, name=name or stem)
    finally:
        path.unlink(missing_ok=True)


def _import_gguf(session: Session, *, user: User, path: Path, filename: str, name: str) -> Model:
    with path.open("rb") as f:
        head = f.read(8)
    # GGUF starts with its magic and a little-endian version; transformers reads versions 2 and 3.
    if head[:4] != GGUF_MAGIC:
        raise Invalid(f"{filename} is not a GGUF file (it does not start with 'GGUF')", field="file", file=filename)
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise Invalid(f"{filename} is GGUF version {version}; versions 2 and 3 are read", field="file", file=filename)
    stored = safe_filename(filename)
    model = create_import(
        session,
        owner_id=user.id,
        name=name,
        source="gguf",
        details={"gguf_file": stored, "size_bytes": path.stat().st_size},
    )
    get_storage().put_file(join(import_key(model.id), stored), path, move=True)
    return model


def _import_zip(session: Session, *, user: User, path: Path, filename: str, name: str) -> Model:
    staged = _temp_path(suffix="")
    try:
        try:
            with zipfile.ZipFile(path) as zf:
                members = _checked_members(zf, filename)
                _extract(zf, members, staged, filename)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as exc:
            raise Invalid(f"{filename} is not a readable zip file ({exc})", field="file", file=filename) from None
        except OSError as exc:  # e.g. a member that is also another member's folder, or a name too long
            raise Invalid(f"{filename}: cannot extract an entry ({exc})", field="file", file=filename) from None
        details = {"filename": safe_filename(filename)}
        return adopt_model_dir(session, owner_id=user.id, staged=staged, name=name, source="upload", details=details)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _checked_members(zf: zipfile.ZipFile, filename: str) -> dict[PurePosixPath, zipfile.ZipInfo]:
    """The files to extract, keyed by their path inside the model directory, after every guard passed."""
    files: dict[PurePosixPath, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        rel = _safe_member_path(info, filename)
        if rel.parts[0] == "__MACOSX" or rel.name == ".DS_Store":
            continue  # Finder's resource forks: not part of the model
        if rel.suffix.lower() in PICKLED:
            raise Invalid(
                f"{filename}: {info.filename} is a pickled checkpoint; only *.safetensors weights are accepted "
                "(pickles can run code when loaded). Remove it, or convert it to safetensors first",
                field="file",
                file=info.filename,
            )
        if info.flag_bits & 0x1:
            raise Invalid(f"{filename}: {info.filename} is encrypted", field="file", file=info.filename)
        files[rel] = info
    if len(files) > MAX_MEMBERS:
        raise Invalid(f"{filename} holds {len(files)} files; a model directory has at most {MAX_MEMBERS}", field="file")
    _check_bomb(files.values(), filename)
    files = _strip_top_folder(files)
    _check_layout(set(files), filename)
    return files


def _safe_member_path(info: zipfile.ZipInfo, filename: str) -> PurePosixPath:
    """The member's relative path; absolute paths, '..', drive letters and links are refused (zip slip)."""
    name = info.filename
    rel = PurePosixPath(name)
    mode = info.external_attr >> 16
    bad = (
        "\\" in name
        or "\x00" in name
        or rel.is_absolute()
        or ".." in rel.parts
        or (rel.parts and ":" in rel.parts[0])
        or not rel.parts
        or stat.S_ISLNK(mode)
    )
    if bad:
        raise Invalid(f"{filename}: unsafe entry {name!r} (outside the directory, or a link)", field="file", file=name)
    return rel


def _check_bomb(infos: Iterable[zipfile.ZipInfo], filename: str) -> None:
    """Refuse before extracting when the declared sizes are too large or compress implausibly well."""
    settings = get_settings()
    total = 0
    for info in infos:
        total += info.file_size
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > RATIO_FLOOR and ratio > settings.max_compression_ratio:
            raise TooLarge(
                f"{filename}: {info.filename} expands {ratio:.0f} times (limit {settings.max_compression_ratio:.0f}): "
                "refused as a zip bomb",
                field="file",
                file=info.filename,
            )
    if total > settings.max_model_upload_bytes:
        raise TooLarge(
            f"{filename} extracts to {total} bytes, over the limit of {settings.max_model_upload_bytes}",
            field="file",
            limit=settings.max_model_upload_bytes,
        )


def _strip_top_folder(files: dict[PurePosixPath, zipfile.ZipInfo]) -> dict[PurePosixPath, zipfile.ZipInfo]:
    """`my-model/config.json` → `config.json`: zipping a folder puts everything under its name."""
    tops = {rel.parts[0] for rel in files}
    if len(tops) == 1 and all(len(rel.parts) > 1 for rel in files):
        return {PurePosixPath(*rel.parts[1:]): info for rel, info in files.items()}
    return files


def _check_layout(names: set[PurePosixPath], filename: str) -> None:
    """Name the first thing a trainable Hugging Face directory lacks."""
    top = {rel.name for rel in names if len(rel.parts) == 1}
    where = "at its top level (or under one folder)"
    if "config.json" not in top:
        raise Invalid(f"{filename} has no config.json {where}: not a Hugging Face model directory", field="file")
    if not any(n.endswith(".safetensors") for n in top):
        raise Invalid(f"{filename} has no *.safetensors weights {where} (only safetensors are loaded)", field="file")
    if not top.intersection(TOKENIZER_FILES):
        raise Invalid(f"{filename} has no tokenizer files ({' or '.join(TOKENIZER_FILES)}) {where}", field="file")


def _extract(zf: zipfile.ZipFile, members: dict[PurePosixPath, zipfile.ZipInfo], dest: Path, filename: str) -> None:
    """Stream each member to `dest`; zipfile stops at the declared size and checks the CRC."""
    dest.mkdir(parents=True)
    root = dest.resolve()
    for rel, info in members.items():
        target = (dest / rel).resolve()
        if not target.is_relative_to(root):
            raise Invalid(f"{filename}: unsafe entry {info.filename!r}", field="file", file=info.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, target.open("wb") as out:
            shutil.copyfileobj(src, out, COPY_CHUNK)


def start_upload(session: Session, *, user: User, filename: str, size: int, name: str = "") -> Upload:
    """A chunked upload of a model file (PUT /api/uploads/{id} carries the chunks, as for datasets)."""
    upload_kind(filename)
    _check_size(size)
    remove_stale_uploads(session)
    upload = Upload(
        id=uuid.uuid4().hex,
        owner_id=user.id,
        filename=safe_filename(filename),
        name=name,
        size_bytes=size,
        received_bytes=0,
        options={"target": UPLOAD_TARGET},
    )
    begin(upload)
    session.add(upload)
    session.flush()
    return upload


def complete_upload(session: Session, *, user: User, upload_id: str, name: str = "") -> Model:
    """Take the received file of a chunked model upload and import it; the upload ends either way."""
    upload = get_upload(session, user=user, upload_id=upload_id)
    if (upload.options or {}).get("target") != UPLOAD_TARGET:
        raise Invalid(f"upload {upload_id} is a dataset upload, not a model's", field="upload_id")
    filename, name = upload.filename, name or upload.name
    # The upload is over even if the file is refused below (the error rolls back the rest).
    taken = take_received(session, upload)
    if isinstance(taken, str):
        # A zip is read with random access (and a .gguf's header checked): a local copy in the cache folder.
        tmp = _temp_path()
        storage = get_storage()
        try:
            storage.fetch(taken, tmp)
        finally:
            storage.delete(taken)
        taken = tmp
    return import_file(session, user=user, path=taken, filename=filename, name=name)
