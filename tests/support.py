"""Helpers to run the studio as real processes (API + Celery worker) and talk to it."""

import contextlib
import copy
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

ADMIN_EMAIL = "admin@localhost"
ADMIN_PASSWORD = "admin-password-123"
USER_PASSWORD = "user-password-123"
STUDIO = [sys.executable, "-m", "backend"]
LIVE_STATUSES = ("queued", "running")
ENDED_STATUSES = ("succeeded", "failed", "cancelled", "paused")


@functools.cache
def password_hash(password: str) -> str:
    """The argon2 hash of `password`, made once per session: hashing takes a third of a second on 2 cores, and
    most tests start with a user of their own (the product's create_user is tested where tests add users)."""
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def reset_process_state() -> None:
    """Forget cached settings, engines and Celery apps after the environment changed."""
    import backend.events
    import backend.queue
    from backend.config import get_settings
    from backend.db.base import reset_engine

    get_settings.cache_clear()
    reset_engine()
    backend.queue._app = None
    backend.events._publisher = None


def stored(key: str) -> Path:
    """The local file or folder of a stored key (a row's `path`) with local storage, the test default."""
    from backend.storage import get_storage

    local = get_storage().local_path(key)
    assert local is not None, f"{key} is not stored locally"
    return local


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What the studios the tests start take as their /metrics bearer token.
METRICS_TOKEN = "test-metrics-token"


class StudioProcess:
    """The studio as a user runs it. Embedded: `studio up`. Server: `studio api` + `studio worker`."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server_mode = "STUDIO_DATABASE_URL" in env
        self.env = {
            **os.environ,
            **env,
            "STUDIO_PORT": str(self.port),
            "STUDIO_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # Short leases so the tests see a killed worker's job reaped within seconds.
            "STUDIO_LEASE_SECONDS": "10",
            "STUDIO_HEARTBEAT_SECONDS": "1",
            "STUDIO_REAP_INTERVAL_SECONDS": "1",
            "STUDIO_METRICS_TOKEN": METRICS_TOKEN,
            "PYTHONUNBUFFERED": "1",
        }
        self.backend_env = dict(env)
        self.data_dir = Path(env["STUDIO_DATA_DIR"])
        self.database_url = env.get("STUDIO_DATABASE_URL") or f"sqlite:///{self.data_dir.resolve() / 'studio.db'}"
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # Who `client()` and the browser tests log in as: the admin, or a user of the test's own (`as_new_user`).
        self.email, self.password, self.token = ADMIN_EMAIL, ADMIN_PASSWORD, ""

    def __enter__(self) -> "StudioProcess":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.server_mode:
            self.cli("migrate")
            self.cli("users", "create", ADMIN_EMAIL, "--password-stdin", "--admin", stdin=ADMIN_PASSWORD + "\n")
            self.start("api", "api", "--no-migrate")
            self.start_worker("worker")
            self.start("analysis", "worker", "--analysis", "--name", f"analysis-{self.port}")
        else:
            self.start("up", "up", "--worker-name", f"embedded-{self.port}")
        self.wait_healthy()
        self.token = self.cli("tokens", "create", ADMIN_EMAIL).strip().splitlines()[-1]
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        for name in list(self.procs):
            self.stop(name)

    def kill(self) -> None:
        """Stop every process at once (SIGKILL), when nothing is left to save: the end of a session's warm studio."""
        for name in list(self.procs):
            self.stop(name, signal.SIGKILL)

    def cli(self, *args: str, stdin: str | None = None) -> str:
        res = subprocess.run(
            [*STUDIO, *args], env=self.env, input=stdin.encode() if stdin else None, capture_output=True, timeout=120
        )
        if res.returncode != 0:
            raise RuntimeError(f"studio {' '.join(args)} failed: {res.stderr.decode()[-2000:]}")
        return res.stdout.decode()

    def start(self, name: str, *args: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [*STUDIO, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_worker(self, name: str) -> None:
        self.start(name, "worker", "--name", f"{name}-{self.port}")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=45)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        # Whatever is left of the group (a Celery pool child, a hung shutdown) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # `studio up` runs its workers in sessions of their own, named after this port.
        subprocess.run(["pkill", "-KILL", "-f", "--", f"-n embedded-{self.port}(-analysis)? "], check=False)

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.log_dir.glob("*.log"))

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"studio did not become healthy:\n{self.logs()}")

    def as_new_user(self) -> "StudioProcess":
        """This studio seen by a fresh user (not an admin, an API token of its own): a test on a shared studio
        sees only its own datasets, jobs and models, so it need not know what ran before it. Only the token
        differs; the processes are the same (stop and start are not for a shared studio)."""
        from sqlalchemy.orm import Session

        from backend.auth.service import issue_token
        from backend.db import User
        from backend.db.base import make_engine

        view = copy.copy(self)
        view.email, view.password = f"user-{uuid.uuid4().hex[:10]}@example.com", USER_PASSWORD
        engine = make_engine(self.database_url)
        try:
            with Session(engine) as s:
                user = User(email=view.email, password_hash=password_hash(view.password))
                s.add(user)
                s.flush()
                view.token = issue_token(s, user=user, kind="api", name="tests")
                s.commit()
        finally:
            engine.dispose()
        return view

    def settle(self, timeout: float = 120) -> None:
        """Cancel this user's unfinished jobs and wait until none runs, so the next test finds the worker idle."""
        with self.client() as client:
            unfinished = [j["id"] for j in client.get("/api/jobs").json()["items"] if j["status"] in LIVE_STATUSES]
            for job_id in unfinished:
                client.post(f"/api/jobs/{job_id}/cancel")
            for job_id in unfinished:
                self.wait_job(client, job_id, ENDED_STATUSES, timeout=timeout)

    @contextlib.contextmanager
    def configured(self) -> Iterator[None]:
        """This test process pointed at the studio's database and broker (for direct reads and enqueues)."""
        with pytest.MonkeyPatch.context() as mp:
            for key, value in self.backend_env.items():
                mp.setenv(key, value)
            reset_process_state()
            try:
                yield
            finally:
                reset_process_state()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)

    def wait_job(self, client: httpx.Client, job_id: int, statuses: tuple[str, ...], timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        job: Any = None
        while time.monotonic() < deadline:
            job = client.get(f"/api/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.5)
        events = client.get(f"/api/jobs/{job_id}/events").json()
        raise TimeoutError(
            f"job {job_id} stuck in {job and job['status']}: {json.dumps(events)[-2000:]}\n{self.logs()}"
        )
