"""A Hugging Face Hub on localhost serving one repository, over real HTTP: enough of the API for
`huggingface_hub` (model info, file tree, resolve with HEAD and GET), so the hub import runs its real
download path offline. Unknown repositories and revisions get the Hub's own 404 error codes."""

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repo_id: str, files: dict[str, bytes], sha: str = "c" * 40, tags: tuple[str, ...] = ()) -> None:
        self.repo_id, self.files, self.sha = repo_id, files, sha
        self.revisions = {"main", sha, *tags}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def downloads(self) -> list[str]:
        """The files fetched (GET on resolve URLs)."""
        prefix = f"/{self.repo_id}/resolve/{self.sha}/"
        return sorted(p[len(prefix) :] for m, p in self.requests if m == "GET" and p.startswith(prefix))

    def answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append((h.command, path))
        api = f"/api/models/{self.repo_id}/"
        resolve = f"/{self.repo_id}/resolve/{self.sha}/"
        json_type = {"Content-Type": "application/json"}
        if path.startswith(api + "revision/"):
            if path.removeprefix(api + "revision/") not in self.revisions:
                self._send(h, 404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, body)
                return
            # Sizes as the Hub gives them with ?blobs=true (files_metadata).
            siblings = [{"rfilename": name, "size": len(data)} for name, data in self.files.items()]
            info = {"id": self.repo_id, "modelId": self.repo_id, "sha": self.sha, "siblings": siblings}
            self._send(h, 200, json.dumps(info).encode(), json_type, body)
        elif path.startswith(api + "tree/"):
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in self.files.items()
            ]
            self._send(h, 200, json.dumps(tree).encode(), json_type, body)
        elif path.startswith(resolve) and path.removeprefix(resolve) in self.files:
            data = self.files[path.removeprefix(resolve)]
            headers = {"X-Repo-Commit": self.sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            self._send(h, 200, data, headers, body)
        else:
            self._send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    thread = threading.Thread(target=hub.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.server.shutdown()
        hub.server.server_close()
