"""A generated 1 GB JSONL through the resumable chunked API and through the one-shot multipart endpoint of a real
`studio up`: upload MB/s (chunk transfer), validation MB/s (the `complete` call) and the API process's peak RSS
growth, printed next to their targets (not asserted: the figures depend on the machine, and on this one's disk
more than its CPU). STUDIO_BENCH_DATASET_GB changes the size."""

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.support import StudioProcess

SIZE_BYTES = int(float(os.environ.get("STUDIO_BENCH_DATASET_GB", "1")) * 1000**3)
TARGET_UPLOAD_MBPS = 300
TARGET_VALIDATE_MBPS = 50
TARGET_RSS_MB = 100


@pytest.fixture(params=["sqlite"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return {"STUDIO_DATA_DIR": str(tmp_path / "data")}


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss(pid: int) -> int:
    """Start the peak (VmHWM) afresh at the current RSS, so start-up's peak does not hide growth; returns it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS")


def _write_alpaca(path: Path, size: int) -> int:
    """Alpaca-like records, all different, until `size` bytes; returns the record count."""
    words = ("the", "model", "reads", "every", "line", "of", "the", "file", "before", "it", "keeps", "any", "of", "it")
    count = 0
    with path.open("w", buffering=1 << 22) as f:
        while f.tell() < size:
            lines = []
            for i in range(count, count + 10_000):
                topic = " ".join(words[(i + k) % len(words)] for k in range(12))
                record = {
                    "instruction": f"Summarize note {i} about {topic}.",
                    "input": f"Note {i}: {topic}. " * 6,
                    "output": f"Note {i} says {topic}. " * 3,
                }
                lines.append(json.dumps(record) + "\n")
            f.write("".join(lines))
            count += 10_000
    return count


def _mbps(size: int, seconds: float) -> float:
    return size / 1e6 / max(seconds, 1e-9)


def _verdict(value: float, target: float, *, below: bool = False) -> str:
    ok = value < target if below else value >= target
    return f"(target {'<' if below else '≥'}{target:g}: {'met' if ok else 'MISSED'})"


def test_one_gigabyte_chunked_and_multipart(studio: StudioProcess, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    records = _write_alpaca(path, SIZE_BYTES)
    size = path.stat().st_size
    os.sync()  # the generator's writeback must not be billed to the upload
    api_pid = studio.procs["up"].pid  # `studio up` serves the API in its own process
    client = studio.client()
    timeout = httpx.Timeout(900)
    rss_start = _reset_peak_rss(api_pid)

    # Chunked: init, PUT every chunk in order, complete (validation).
    up = client.post("/api/uploads", json={"filename": "big.jsonl", "size": size}).json()
    chunk = int(up["chunk_size"])
    t0 = time.perf_counter()
    with path.open("rb") as f:
        offset = 0
        while data := f.read(chunk):
            end = offset + len(data)
            res = client.put(
                f"/api/uploads/{up['id']}", content=data, headers={"Content-Range": f"bytes {offset}-{end - 1}/{size}"}
            )
            assert res.status_code == 200, res.text
            offset = end
    upload_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = client.post(f"/api/uploads/{up['id']}/complete", timeout=timeout)
    validate_s = time.perf_counter() - t0
    assert res.status_code == 201, res.text
    assert res.json()["record_count"] == records
    rss_chunked = (_status_kb(api_pid, "VmHWM") - rss_start) / 1024

    # Multipart: one request, streamed to a temp file and validated before the answer.
    os.sync()
    t0 = time.perf_counter()
    with path.open("rb") as f:
        res = client.post("/api/datasets", files={"file": ("big.jsonl", f)}, timeout=timeout)
    multipart_s = time.perf_counter() - t0
    assert res.status_code == 201, res.text
    rss_all = (_status_kb(api_pid, "VmHWM") - rss_start) / 1024

    path.unlink()  # a gigabyte per run would pile up in pytest's kept temp dirs
    for ds in client.get("/api/datasets").json()["items"]:
        client.delete(f"/api/datasets/{ds['id']}")
    up_mbps, val_mbps = _mbps(size, upload_s), _mbps(size, validate_s)
    print(
        f"\nBENCH dataset {size / 1e6:.0f} MB JSONL ({records:,} alpaca records), 8 MiB chunks over loopback:"
        f"\n  chunked upload    {upload_s:6.1f} s = {up_mbps:6.0f} MB/s {_verdict(up_mbps, TARGET_UPLOAD_MBPS)}"
        f"\n  validation        {validate_s:6.1f} s = {val_mbps:6.0f} MB/s {_verdict(val_mbps, TARGET_VALIDATE_MBPS)}"
        f"\n  multipart (both)  {multipart_s:6.1f} s = {_mbps(size, multipart_s):6.0f} MB/s end to end"
        f"\n  API peak RSS growth: chunked {rss_chunked:.0f} MB, after multipart {rss_all:.0f} MB "
        f"{_verdict(rss_all, TARGET_RSS_MB, below=True)}"
    )
