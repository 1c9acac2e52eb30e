"""A stored object as an HTTP download: the file itself (local storage), a redirect to a presigned URL (S3 with
STUDIO_S3_PRESIGNED_DOWNLOADS), or the object streamed through the API in chunks (never whole in memory)."""

from collections.abc import Iterator
from urllib.parse import quote

from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from backend.config import get_settings
from backend.storage import get_storage

CHUNK = 1 << 20


def download(key: str, *, filename: str, media_type: str) -> Response:
    """The response that hands `key` to a browser as the attachment `filename`."""
    storage = get_storage()
    local = storage.local_path(key)
    if local is not None:
        return FileResponse(local, filename=filename, media_type=media_type)
    if get_settings().s3_presigned_downloads and (url := storage.presigned_url(key, filename=filename)):
        return RedirectResponse(url, status_code=307)
    size = storage.size(key)

    def chunks() -> Iterator[bytes]:
        with storage.open(key) as stream:
            while chunk := stream.read(CHUNK):
                yield chunk

    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
    }
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)
