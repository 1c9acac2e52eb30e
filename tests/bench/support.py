"""What every benchmark records beside its figures: when, on which machine, under what load."""

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """Cores, torch threads, the CPU model and the load average when the figures were taken (the machine may be
    shared: the load says how far to trust them)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "")
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_model": model,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """tests/bench/results/<name>.json: the date, the machine and `figures`."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), **figures}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
