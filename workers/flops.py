"""The device's peak matmul throughput, the denominator of model FLOPs utilisation (MFU), measured once per process.

A datasheet peak is unknown for most CPUs (it depends on the vector units, the clock under load and the threads
torch was given) and is seldom reached on GPUs, so the worker measures what a large dense matmul reaches here, in
the precision its jobs train in: fp32 on a CPU with the worker's torch threads, bf16 on a GPU that supports it
natively (else fp32, as the jobs there run). MFU against this figure says how far a job is from what the hardware
demonstrably does, not from a number on a box: 100% would mean every step ran at dense-matmul speed.
"""

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# Square matmul sizes: big enough to be compute-bound (each operand read once per ~n multiply-adds), small enough
# to take milliseconds. A CPU's 2048³ is ~17 GFLOP: ~70 ms on two cores, a few on sixty-four.
CPU_SIZE = 2048
CUDA_SIZE = 8192
# Each measurement times repeats for about this long and keeps the fastest: other work on the machine only ever
# slows a repeat down, so the fastest is the closest to what the device can do.
SECONDS = 1.0
MIN_REPEATS = 3
# On a GPU each timed repeat is a burst of matmuls: one 8192³ bf16 matmul (~1 TFLOP) takes about a millisecond,
# too short to time alone against the launch and the clock's resolution.
CUDA_BURST = 10


@dataclass(frozen=True)
class Peak:
    """What the device's fastest dense matmul reached: FLOP/s, in which precision, with how many CPU threads."""

    flops_per_second: float
    dtype: str  # "fp32" or "bf16"
    device: str  # "cpu" or "cuda"
    threads: int  # torch's intra-op threads (what a CPU job trains with)
    size: int  # the square matmul's side

    def details(self) -> dict[str, Any]:
        """The worker registry's form (its `details` JSON column)."""
        return asdict(self)


def _fastest(timed: Callable[[], float], seconds: float) -> float:
    """The shortest of the durations `timed` returns, called for about `seconds` (at least MIN_REPEATS times)."""
    best = math.inf
    repeats = 0
    end = time.perf_counter() + seconds
    while repeats < MIN_REPEATS or time.perf_counter() < end:
        best = min(best, timed())
        repeats += 1
    return best


def _cpu_peak(size: int, seconds: float) -> Peak:
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: the BLAS's thread pool and buffers

    def once() -> float:
        began = time.perf_counter()
        torch.mm(a, b, out=out)
        return time.perf_counter() - began

    return Peak(2.0 * size**3 / _fastest(once, seconds), "fp32", "cpu", torch.get_num_threads(), size)


def _cuda_matmul_seconds(size: int, dtype: torch.dtype, seconds: float) -> float:
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    out = torch.empty(size, size, device="cuda", dtype=dtype)
    for _ in range(CUDA_BURST):  # warm-up: cuBLAS picks its kernel, the clocks ramp up
        torch.mm(a, b, out=out)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def burst() -> float:
        start.record()
        for _ in range(CUDA_BURST):
            torch.mm(a, b, out=out)
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1000 / CUDA_BURST

    return _fastest(burst, seconds)


def _cuda_peak(size: int, seconds: float) -> Peak:
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    best = _cuda_matmul_seconds(size, dtype, seconds)  # its operands are freed when it returns
    torch.cuda.empty_cache()  # the next job's memory is its own
    return Peak(
        2.0 * size**3 / best, "bf16" if dtype == torch.bfloat16 else "fp32", "cuda", torch.get_num_threads(), size
    )


def measure_peak(size: int | None = None, seconds: float = SECONDS) -> Peak:
    """Time a square matmul of side `size` for about `seconds` on this process's device; the fastest repeat."""
    if torch.cuda.is_available():
        return _cuda_peak(size or CUDA_SIZE, seconds)
    return _cpu_peak(size or CPU_SIZE, seconds)


class _Cache:
    peak: Peak | None = None
    lock = threading.Lock()


def device_peak() -> Peak:
    """This process's peak, measured on first use (the worker measures it when it registers). The lock makes a
    job that starts during the measurement wait for it rather than run a second one beside it: two would share
    the cores and each report half."""
    with _Cache.lock:
        if _Cache.peak is None:
            _Cache.peak = measure_peak()
        return _Cache.peak


def lookup_weights(model: nn.Module) -> int:
    """Weights of the input embedding that cost no FLOPs: a table lookup, unless the output head is the same
    tensor (tied), whose matmul then counts them once. 0 when the model has no input embedding to ask for."""
    get_input, get_output = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    weight = getattr(embedding, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return 0
    head = get_output() if callable(get_output) else None
    return 0 if getattr(head, "weight", None) is weight else weight.numel()
