"""Which process of a data-parallel run this is, how many there are, and how they agree on a decision.

A data-parallel job runs its recipe once per device (`workers.distributed`). Every rank trains on its own
share of each batch; the gradients are averaged in an all-reduce at every step. Only rank 0 talks to the
database (`backend.job.lifecycle` skips the others' writes), and only rank 0 reads the cancel and pause flags:
its answer is broadcast, so every rank stops at the same step. Were one rank to stop alone, the others would
wait forever in the next all-reduce. In a single process every function here is a plain pass-through.
"""

from typing import TypeVar

import torch
import torch.distributed as dist

from backend.config import get_settings

# Every answer a beat can give (backend.job.lifecycle.beat), coded as its index for the broadcast.
DECISIONS = ("run", "pause", "stop", "shutdown")

T = TypeVar("T")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes training this job together (1 outside a data-parallel run)."""
    return dist.get_world_size() if _distributed() else 1


def rank() -> int:
    return dist.get_rank() if _distributed() else 0


def is_main() -> bool:
    """True in the process that writes rows and files: rank 0, or the only process."""
    return rank() == 0


def agree(decision: str) -> str:
    """Rank 0's `decision` ("run", "pause" or "stop"), on every rank.

    A collective: all ranks must call it at the same point of the loop (each step's end, each check-in)."""
    if not _distributed():
        return decision
    code = torch.tensor([DECISIONS.index(decision)], dtype=torch.int64, device=_device())  # one int64 is enough
    dist.broadcast(code, src=0)
    return DECISIONS[int(code.item())]


def share(value: T) -> T:
    """Rank 0's `value` (anything picklable), on every rank. A collective, like `agree`."""
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one. A collective: it is also a barrier."""
    if not _distributed():
        return flag
    seen = torch.tensor([int(flag)], dtype=torch.int64, device=_device())
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return bool(seen.item())


def _device() -> torch.device:
    # NCCL moves only GPU tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def per_device_batch_size(batch_size: int, processes: int | None = None) -> int:
    """Sequences each process takes per step, so that `batch_size` means the whole step's batch on any number
    of devices (the learning rate and the step count then mean the same too)."""
    processes = processes or world_size()
    if batch_size % processes:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly over this worker's {processes} data-parallel "
            f"processes; use a multiple of {processes} (or set STUDIO_DATA_PARALLEL_PROCESSES)"
        )
    return batch_size // processes


def data_parallel_processes() -> int:
    """How many processes this worker trains a job with: the setting, or one per CUDA GPU (1 on CPU)."""
    configured = get_settings().data_parallel_processes
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if configured and gpus and configured > gpus:
        raise ValueError(
            f"STUDIO_DATA_PARALLEL_PROCESSES={configured}, but this worker sees only {gpus} CUDA GPU(s): "
            "one process per GPU at most"
        )
    return configured or max(1, gpus)
