"""Upload + validation throughput of the API process, and its peak RSS growth. Prints its figures."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import StudioProcess

SIZE_MB = 256


@pytest.fixture(params=["sqlite"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return {"STUDIO_DATA_DIR": str(tmp_path / "data")}


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def test_upload_and_validate_throughput(studio: StudioProcess, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = (
        json.dumps({"instruction": "Summarize the text. " * 8, "input": "x " * 200, "output": "y " * 100}) + "\n"
    ).encode()
    with path.open("wb") as f:
        for _ in range(SIZE_MB * 1024 * 1024 // len(line)):
            f.write(line)
    size_mb = path.stat().st_size / 1e6
    api_pid = next(iter(studio.procs.values())).pid
    before = _peak_rss_kb(api_pid)
    client = studio.client()
    t0 = time.perf_counter()
    res = client.post("/api/datasets", files={"file": ("big.jsonl", path.open("rb"))}, timeout=httpx.Timeout(600))
    elapsed = time.perf_counter() - t0
    assert res.status_code == 201, res.text
    growth_mb = (_peak_rss_kb(api_pid) - before) / 1024
    print(
        f"\nBENCH upload+validate {size_mb:.0f} MB JSONL ({res.json()['record_count']} alpaca records): "
        f"{elapsed:.1f} s = {size_mb / elapsed:.0f} MB/s end to end; API peak RSS growth {growth_mb:.0f} MB"
    )
