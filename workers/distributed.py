"""Data-parallel training: a job's recipe runs in one process per device, launched by torchrun.

The worker's task (`run_data_parallel`, called from `workers.tasks.run_job`) keeps the claim and the lease
and starts `python -m torch.distributed.run --nproc-per-node N -m workers.distributed <job_id>`. Each child
(`main`) joins the process group and runs the same recipe: the Trainer gives every rank its own share of each
batch and averages the gradients (DDP), so all ranks hold the same weights after every step. Rank 0 alone
writes rows and files (`backend.job.lifecycle`, `workers.artifacts`) and reads the cancel and pause flags for
everyone (`workers.ranks.agree`).

Every rank writes how it ended to `<job dir>/data-parallel/rank-<n>.json`; the task turns those into the
job's end: the same Cancelled / Paused / Diverged a single-process recipe raises, or a failure carrying the
failing rank's own traceback.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from backend.config import REPO_ROOT
from backend.job.lifecycle import RANK_ENV, log_event
from backend.work import lease
from backend.work.kinds import JOB
from backend.work.lease import Lease, LeaseLost
from workers.context import JobContext, load_context
from workers.metrics import Cancelled, Diverged, Paused, ShuttingDown
from workers.ranks import per_device_batch_size
from workers.recipes import recipe_for

TRACEBACK_LINES = 15
LOG_TAIL_CHARS = 3000
# How long a rank waits in a collective. torch's default (10 minutes) is shorter than rank 0 may take to store a
# large checkpoint in the bucket (S3 storage) while the others wait for the outcome of the save.
COLLECTIVE_TIMEOUT = timedelta(hours=1)


class RankFailed(Exception):
    """A data-parallel process failed; carries its own error type and traceback tail (not the launcher's)."""

    def __init__(self, message: str, *, error_type: str, tail: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.tail = tail


# --- the worker's side: launch, wait, read the outcome ------------------------------------------------


def outcome_dir(ctx: JobContext) -> Path:
    return ctx.output_dir / "data-parallel"


def launch_command(job_id: int, processes: int) -> list[str]:
    # Rank 0 writes under the worker's lease: its attempt fences those writes as it fences the worker's own.
    held = lease.held(JOB, job_id)
    fencing = [str(held.attempt), held.worker] if held is not None else []
    return [
        sys.executable, "-m", "torch.distributed.run",
        # --standalone: a rendezvous on a free local port, so two workers on one host never collide.
        "--standalone", "--nnodes", "1", "--nproc-per-node", str(processes),
        "-m", "workers.distributed", str(job_id), *fencing,
    ]  # fmt: skip


def child_environment(processes: int) -> dict[str, str]:
    env = dict(os.environ)
    # torchrun would pin every child to 1 thread; share the cores instead (on CPU the threads do the math).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop(RANK_ENV, None)
    return env


def run_data_parallel(ctx: JobContext, processes: int) -> None:
    """Train job `ctx` in `processes` processes; return if it succeeded, else raise what a recipe would."""
    per_device_batch_size(ctx.hp.batch_size, processes)  # refuse an uneven split before starting anything
    folder = outcome_dir(ctx)
    shutil.rmtree(folder, ignore_errors=True)  # a resumed job's earlier attempt left its outcomes here
    folder.mkdir(parents=True)
    log_event(ctx.job_id, f"data parallel: {processes} processes on {socket.gethostname()}")
    log = folder / "torchrun.log"
    with log.open("wb") as out:
        code = subprocess.run(
            launch_command(ctx.job_id, processes),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=child_environment(processes),
            check=False,
        ).returncode
    raise_outcome(read_outcomes(folder), code, log)


def read_outcomes(folder: Path) -> dict[int, dict[str, Any]]:
    outcomes = {}
    for path in folder.glob("rank-*.json"):
        outcomes[int(path.stem.removeprefix("rank-"))] = json.loads(path.read_text())
    return outcomes


def raise_outcome(outcomes: dict[int, dict[str, Any]], code: int, log: Path) -> None:
    """Re-raise how the run ended in the worker: the first failure wins (the others mostly died of it)."""
    failures = sorted((o for o in outcomes.values() if o["status"] == "failed"), key=lambda o: o["time"])
    if failures:
        first = failures[0]
        raise RankFailed(first["error"], error_type=first["error_type"], tail=first["traceback"])
    main = outcomes.get(0)
    if main is None or code != 0:
        tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
        raise RankFailed(
            f"the data-parallel processes exited with code {code} without saying why",
            error_type="RuntimeError",
            tail=tail,
        )
    status, message = main["status"], main.get("message", "")
    if status == "cancelled":
        raise Cancelled()
    if status == "paused":
        raise Paused(message)
    if status == "diverged":
        raise Diverged(message)
    if status == "shutdown":
        raise ShuttingDown(message)
    if status == "lost":
        raise LeaseLost(message)


# --- one rank's side ----------------------------------------------------------------------------------


def run_rank(ctx: JobContext) -> dict[str, Any]:
    """Run the recipe in this rank; say how it ended (never raises)."""
    try:
        recipe_for(ctx)(ctx)
    except Cancelled:
        return {"status": "cancelled"}
    except Paused as exc:
        return {"status": "paused", "message": str(exc)}
    except Diverged as exc:
        return {"status": "diverged", "message": str(exc)}
    except ShuttingDown as exc:
        return {"status": "shutdown", "message": str(exc)}
    except LeaseLost as exc:
        return {"status": "lost", "message": str(exc)}
    except Exception as exc:
        tail = "".join(traceback.format_exc().splitlines(keepends=True)[-TRACEBACK_LINES:])
        rank = os.environ.get("RANK", "?")
        return {"status": "failed", "error": f"rank {rank}: {exc}", "error_type": type(exc).__name__, "traceback": tail}
    return {"status": "succeeded"}


def write_outcome(ctx: JobContext, outcome: dict[str, Any]) -> None:
    path = outcome_dir(ctx) / f"rank-{dist.get_rank()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**outcome, "time": time.time()}))
    os.replace(tmp, path)  # the worker never reads half a file


def main(argv: list[str]) -> None:
    """Entry point of one torchrun child: `python -m workers.distributed <job_id>`; never returns."""
    job_id = int(argv[0])
    os.environ[RANK_ENV] = os.environ["RANK"]  # read by backend.job.lifecycle's writers (rank 0 only)
    if len(argv) == 3:
        lease.hold(Lease(JOB, job_id, int(argv[1]), argv[2]))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # Joined here, before the recipe, so the check-ins between preparation stages can already agree.
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    ctx = load_context(job_id)
    outcome = run_rank(ctx)
    write_outcome(ctx, outcome)
    failed = outcome["status"] == "failed"
    if not failed:
        dist.destroy_process_group()
    # Rows, files and the outcome are written: skip the interpreter's teardown of torch (seconds per process).
    # A failed rank exits at once too, and torchrun then stops the others, which may be waiting for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
