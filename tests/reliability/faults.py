"""Faults injected for real: a Redis server of the test's own (to kill and restart), a TCP proxy in front of
PostgreSQL (to cut the database away and bring it back), and the server-mode studio they sit under."""

import contextlib
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from safetensors.torch import load_file

from tests.conftest import PG_ADMIN_URL
from tests.support import StudioProcess, free_port

FIXTURES = Path(__file__).parent.parent / "fixtures"
# A `tiny` pretrain slow enough (~0.2 s a step on 2 cores) to be caught mid-run, fast enough for a test.
HP = {
    "max_steps": 60,
    "max_length": 128,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "warmup_steps": 2,
    "checkpoint_steps": 20,
    "eval_steps": 30,
    "logging_steps": 1,
    "seed": 7,
}


class RedisServer:
    """redis-server on a port of its own, keeping nothing on disk (a restart loses every queued message)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Proxy:
    """A TCP proxy to PostgreSQL. `cut()` drops every connection and refuses new ones (a database restart or a
    network partition, as the studio sees it); `restore()` accepts again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is not server:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own (SQLAlchemy URL), dropped at the end."""
    name = f"studio_fault_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_studio(database_url: str, redis: RedisServer, data_dir: Path, log_dir: Path, **env: str) -> StudioProcess:
    """`studio api` + `studio worker` + `studio worker --analysis` (not started yet) on this database and Redis;
    `env` overrides settings (the lease is 10 s, heartbeats every second)."""
    studio = StudioProcess(
        {
            "STUDIO_DATA_DIR": str(data_dir),
            "STUDIO_DATABASE_URL": database_url,
            "STUDIO_BROKER_URL": redis.url,
            "STUDIO_REDIS_URL": redis.url,
        },
        log_dir=log_dir,
    )
    studio.env.update({"STUDIO_REDELIVER_SECONDS": "3", "STUDIO_SHUTDOWN_GRACE_SECONDS": "30", **env})
    return studio


def submit(client: httpx.Client, **hp: Any) -> dict[str, Any]:
    """A `tiny` pretrain job on tiny.txt with HP overridden by `hp`."""
    res = client.post("/api/datasets", files={"file": ("tiny.txt", (FIXTURES / "tiny.txt").read_bytes())})
    assert res.status_code == 201, res.text
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": res.json()["id"], "hyperparameters": {**HP, **hp}}
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    return dict(res.json())


def wait_for_step(studio: StudioProcess, client: httpx.Client, job_id: int, step: int, timeout: float = 180) -> None:
    """Until the job is running past `step` with a complete checkpoint on disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        checkpoints = client.get(f"/api/jobs/{job_id}/checkpoints").json()
        if job["status"] == "running" and job["current_step"] >= step and checkpoints:
            return
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not reach step {step}:\n{studio.logs()}")


def wait_running(client: httpx.Client, job_id: int, step: int, timeout: float = 120) -> None:
    """Until the job is running past `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] == "running" and job["current_step"] >= step:
            return
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never reached step {step}")


def events(client: httpx.Client, job_id: int) -> list[str]:
    return [e["message"] for e in client.get(f"/api/jobs/{job_id}/events").json()]


def loss_steps(client: httpx.Client, job_id: int) -> list[int]:
    """The steps of the job's training-loss points, in order."""
    points = client.get(f"/api/jobs/{job_id}/metrics").json()
    return [p["step"] for p in points if "loss" in p["values"]]


def final_weights(data_dir: Path, job_id: int) -> dict[str, Any]:
    return load_file(str(data_dir / "jobs" / str(job_id) / "model" / "model.safetensors"))


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by its parent yet) is not running.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def signal_group(studio: StudioProcess, name: str, sig: int) -> subprocess.Popen[bytes]:
    """Send `sig` to the process group of studio process `name` (what systemd or `docker stop` does)."""
    proc = studio.procs[name]
    os.killpg(proc.pid, sig)
    return proc
