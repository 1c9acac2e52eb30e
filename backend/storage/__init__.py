"""Storage is a seam, not a path: the database stores keys, and this package turns a key into bytes.

`get_storage()` is the configured backend: the data directory (`LocalStorage`, the default) or an S3-compatible
bucket (`S3Storage`, STUDIO_STORAGE_URL=s3://bucket/prefix). `get_cache()` gives a process local files for what
it reads (the object's own file with local storage, a bounded copy otherwise), and `work_dir(key)` is where a
worker writes something before it is stored under `key`.

Keys in use (what the database rows hold):
  datasets/<user>/<sha256[:16]>-<name>       a dataset version's file
  models/<id>/...                            an uploaded or imported model (a Hugging Face directory)
  imports/<id>/<file>                        the uploaded .gguf an import converts
  jobs/<id>/{model,adapter}/...              a job's trained weights (complete once COMPLETE is stored, stored last)
  jobs/<id>/checkpoints/checkpoint-<step>/   its checkpoints (complete once COMPLETE is stored, stored last)
  jobs/<id>/<name>.zip, jobs/<id>/exports/<export>/attempt-<n>/<name>.zip   its artifacts
"""

from pathlib import Path
from urllib.parse import urlsplit

from backend.config import Settings, get_settings
from backend.storage.base import BadKey, Storage, check_key, join
from backend.storage.cache import Cache, pinned
from backend.storage.local import LocalStorage

__all__ = [
    "BadKey",
    "Cache",
    "LocalStorage",
    "Storage",
    "check_key",
    "get_cache",
    "get_storage",
    "is_local",
    "join",
    "key_of",
    "open_storage",
    "pinned",
    "scratch_dir",
    "stored_key_of_work",
    "work_dir",
    "work_path",
]

_storages: dict[tuple[str, str, str, str], Storage] = {}


def open_storage(settings: Settings) -> Storage:
    """The storage `settings` name: S3 for an s3:// URL, else the data directory."""
    url = settings.storage_url
    if not url:
        return LocalStorage(settings.data_dir)
    parts = urlsplit(url)
    # Imported here: boto3 loads in ~0.3 s, and the embedded default never needs it.
    from backend.storage.s3 import S3Storage

    return S3Storage(
        parts.netloc,
        parts.path,
        endpoint_url=settings.s3_endpoint_url,
        public_endpoint_url=settings.s3_public_endpoint_url,
    )


def get_storage() -> Storage:
    """The configured storage, one client per distinct configuration (boto3 clients are thread-safe)."""
    settings = get_settings()
    ident = (str(settings.data_dir), settings.storage_url, settings.s3_endpoint_url, settings.s3_public_endpoint_url)
    if ident not in _storages:
        _storages[ident] = open_storage(settings)
    return _storages[ident]


def get_cache() -> Cache:
    """This process's local copies of stored objects (STUDIO_CACHE_DIR, at most STUDIO_CACHE_MAX_BYTES)."""
    settings = get_settings()
    return Cache(get_storage(), settings.cache_path, settings.cache_max_bytes)


def is_local() -> bool:
    """Whether objects are files in the data directory (so a worker can write them in place)."""
    return isinstance(get_storage(), LocalStorage)


def work_path(key: str) -> Path:
    """The local folder a worker fills before storing it under `key`: the stored folder itself with local
    storage, a folder in the cache otherwise (stored when complete). Not created here."""
    own = get_storage().local_path(key)
    return own if own is not None else get_settings().cache_path / "work" / check_key(key)


def work_dir(key: str) -> Path:
    """`work_path`, created."""
    path = work_path(key)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stored_key_of_work(path: Path) -> str | None:
    """The key a folder under the work area (`work_path`) is stored as; None with local storage (written in place)
    or for a path outside the work area."""
    if is_local():
        return None
    work = get_settings().cache_path / "work"
    return path.relative_to(work).as_posix() if path.is_relative_to(work) else None


def key_of(path: Path) -> str:
    """The key of a file or folder under the data directory; an absolute path for one outside it (a model
    directory registered where it is, from the command line)."""
    root = get_settings().data_dir
    resolved = path.resolve()
    if resolved.is_relative_to(root):
        return check_key(resolved.relative_to(root).as_posix())
    return str(resolved)


def scratch_dir() -> Path:
    """Where a process spools a file before storing it: in the data directory with local storage (so storing
    it is a rename), in the cache folder otherwise."""
    settings = get_settings()
    return settings.path("tmp") if is_local() else _made(settings.cache_path / "tmp")


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
