"""Pretraining on a corpus bigger than memory (issue 14, item 3): the worker's peak resident memory must not grow
with the corpus. Measured in the same run through the worker's own code path (`workers.tasks.run_job` in a
process of its own, so its VmHWM is the job's alone):

- a 100 MB text corpus (the baseline) and a large one (1 GB, or the largest size that fits the time budget on
  this machine: tokenizing is the slow part, and its rate is measured on the baseline first), each ingested the
  way tests register a dataset (streamed sha256 and the validating `summarize`, whose peak memory is measured
  too), then `tiny` pretrained for a few steps: peak RSS, tokenization throughput, the job's wall time;
- a second job on the baseline corpus: it maps the cached token files instead of tokenizing again.

The text is synthetic but varied: paragraphs of words drawn with their frequencies in tinyshakespeare, cut and
recombined. Figures go to tests/bench/results/corpus.json. BENCH_CORPUS_MB forces the large size;
BENCH_CORPUS_SECONDS is the time budget (default 480 s) the large size is chosen to fit;
BENCH_CORPUS_BASELINE_MB shrinks the baseline while developing.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from backend.config import REPO_ROOT
from backend.db import Dataset, JobEvent, session_scope
from backend.migrate import upgrade
from tests.bench.support import machine
from tests.workers.support import Seed, add_user, create_job, studio_env

MB = 10**6
BASELINE_MB = int(os.environ.get("BENCH_CORPUS_BASELINE_MB", "100"))
FORCED_MB = int(os.environ.get("BENCH_CORPUS_MB", "0"))
BUDGET_SECONDS = float(os.environ.get("BENCH_CORPUS_SECONDS", "480"))
SIZES_MB = (1000, 700, 500, 300, 200)  # the first that fits the budget is measured against the baseline
RSS_LIMIT = 2.5 * 2**30
RESULTS = Path(__file__).parent / "results" / "corpus.json"
SOURCE = REPO_ROOT.parent / "shared" / "datasets" / "pretrain" / "tinyshakespeare.txt"
FALLBACK_SOURCE = REPO_ROOT / "tests" / "workers" / "fixtures" / "fables.txt"
HP = {
    "max_steps": 10,
    "max_length": 256,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "logging_steps": 1,
    "eval_steps": 10,
    # A few hundred held-out blocks: the final evaluation reads them all, and this measures memory, not eval.
    "validation_fraction": 0.002,
    "checkpoint_minutes": 0,
    "seed": 0,
}

# The worker, alone in its process: run the job, then report the process's peak resident memory since it started.
CHILD = """
import json, sys
from pathlib import Path
from workers import token_meter
from workers.tasks import run_job
from workers.token_meter import resident_peak_bytes
# The job's meter resets VmHWM when the trainer starts (its own peak counts from there): kept whole here, so the
# figure covers the tokenizer's training and the tokenizing too.
token_meter.CLEAR_REFS = Path("/nonexistent/clear_refs")
status = run_job(int(sys.argv[1]))
peak = resident_peak_bytes()
print("RESULT " + json.dumps({"status": status, "peak_rss": peak}))
"""

# The dataset ingest's validating walk, alone in its process.
INGEST = """
import json, sys
from pathlib import Path
from backend.dataset.formats import summarize
path = Path(sys.argv[1])
summary = summarize(path, path.name)
status = Path("/proc/self/status").read_text().splitlines()
peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
print("RESULT " + json.dumps({"records": summary.record_count, "shape": summary.shape, "format": summary.format,
                              "options": summary.options, "peak_rss": peak}))
"""


def generate(path: Path, n_bytes: int, seed: int) -> None:
    """About `n_bytes` of paragraphs separated by blank lines, from tinyshakespeare's word frequencies."""
    source = SOURCE if SOURCE.is_file() else FALLBACK_SOURCE
    counts = Counter(re.findall(r"[A-Za-z']+|[.,;:!?]", source.read_text()))
    vocab = list(counts)
    p = np.array([counts[w] for w in vocab], dtype=float)
    p /= p.sum()
    rng = np.random.default_rng(seed)
    pool = [" ".join(vocab[i] for i in rng.choice(len(vocab), int(rng.integers(20, 400)), p=p)) for _ in range(4000)]
    written = 0
    with path.open("w") as f:
        while written < n_bytes:
            picks, cuts = rng.integers(0, len(pool), 2000), rng.integers(0, 60, 2000)
            # A paragraph from its cut onwards, then the start of another: few paragraphs repeat exactly.
            chunk = "\n\n".join(
                pool[i][c:] + " " + pool[(i * 7 + c) % len(pool)][: c * 3] for i, c in zip(picks, cuts, strict=True)
            )
            f.write(chunk + "\n\n")
            written += len(chunk) + 2


def child(code: str, *args: str, env: dict[str, str], timeout: float) -> tuple[dict[str, Any], float]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - began
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT ")), seconds


def register(owner_id: int, path: Path, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """The dataset row as an upload makes it: a streamed sha256 and the validating walk (in its own process)."""
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * 2**20):
            sha.update(block)
    ingest, seconds = child(INGEST, str(path), env=env, timeout=600)
    with session_scope() as s:
        row = Dataset(
            owner_id=owner_id,
            name=path.stem,
            filename=path.name,
            path=str(path),
            size_bytes=path.stat().st_size,
            sha256=sha.hexdigest(),
            format=ingest["format"],
            shape=ingest["shape"],
            record_count=ingest["records"],
            options=ingest["options"],
        )
        s.add(row)
        s.flush()
        return row.id, {"ingest_peak_rss_mb": round(ingest["peak_rss"] / 2**20), "ingest_seconds": round(seconds, 1)}


def events(job_id: int) -> list[tuple[float, str]]:
    """(seconds since the job's first event, message) of each event."""
    with session_scope() as s:
        rows = s.execute(
            select(JobEvent.created_at, JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    return [((at - rows[0][0]).total_seconds(), message) for at, message in rows]


def pretrain(seed: Seed, dataset_id: int, env: dict[str, str]) -> dict[str, Any]:
    job_id = create_job(seed, kind="pretrain", architecture="tiny", dataset_id=dataset_id, hyperparameters=HP)
    result, seconds = child(CHILD, str(job_id), env=env, timeout=1800)
    timed = events(job_id)
    assert result["status"] == "succeeded", timed[-5:]
    figures: dict[str, Any] = {"peak_rss_mb": round(result["peak_rss"] / 2**20), "job_seconds": round(seconds, 1)}
    # Tokenizer and token files ready when the model is built: what the corpus cost before the first step.
    figures["data_ready_seconds"] = next(round(t, 1) for t, line in timed if line.startswith("initialized a tiny"))
    for _, line in timed:
        if m := re.search(r"tokenized .* ([\d.,]+) MB → ([\d,]+) tokens in (\d+) s \(([\d.]+) MB/s\)", line):
            mb, tokens, secs = float(m[1].replace(",", "")), int(m[2].replace(",", "")), int(m[3])
            figures |= {"corpus_mb": mb, "tokens": tokens, "tokenize_seconds": secs, "tokenize_mb_s": float(m[4])}
            figures["tokenize_tokens_s"] = round(tokens / max(secs, 1))
        if m := re.search(r"tokenizer with \d+ tokens on .*: ([\d,]+) documents, ([\d.,]+) MB .* in (\d+) s", line):
            figures |= {"tokenizer_sample_mb": float(m[2].replace(",", "")), "tokenizer_seconds": int(m[3])}
        figures["reused_token_files"] = figures.get("reused_token_files", False) or "reusing the token files" in line
    return figures


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder of the bench's own: pytest's tmp_path may be pruned by other pytest runs on the machine during the
    minutes this bench takes."""
    folder = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_bench_corpus_peak_rss_does_not_grow_with_the_corpus(workdir: Path) -> None:
    tmp_path = workdir
    data_dir = tmp_path / "studio"
    data_dir.mkdir()
    env = {
        **os.environ,
        "STUDIO_DATA_DIR": str(data_dir),
        "STUDIO_DATABASE_URL": f"sqlite:///{data_dir / 'studio.db'}",
        "STUDIO_REDIS_URL": "",
        "STUDIO_WORKER_NAME": "",
    }
    began = time.perf_counter()
    with studio_env(data_dir):
        upgrade()
        owner = add_user("bench@example.com")
        seed = Seed(data_dir=data_dir, user_id=owner, text_dataset_id=0, alpaca_dataset_id=0)

        small_path = tmp_path / f"corpus-{BASELINE_MB}mb.txt"
        generate(small_path, BASELINE_MB * MB, seed=1)
        small_id, small_ingest = register(owner, small_path, env)
        small = pretrain(seed, small_id, env) | small_ingest
        again = pretrain(seed, small_id, env)
        print(
            f"BENCH corpus {BASELINE_MB} MB: peak RSS {small['peak_rss_mb']} MB, tokenized at "
            f"{small['tokenize_mb_s']} MB/s ({small['tokenize_tokens_s']:,} tokens/s), job {small['job_seconds']} s; "
            f"second job on it: {again['job_seconds']} s (token files reused: {again['reused_token_files']})"
        )

        # The large size: forced, or the largest whose tokenizing (at the rate just measured) fits what is left.
        left = BUDGET_SECONDS - (time.perf_counter() - began)
        fixed = small["job_seconds"] - small["tokenize_seconds"]
        rate = small["tokenize_mb_s"]
        fits = [mb for mb in SIZES_MB if fixed + mb / rate + mb * 0.05 <= left]
        large_mb = FORCED_MB or (fits[0] if fits else SIZES_MB[-1])
        large_path = tmp_path / f"corpus-{large_mb}mb.txt"
        generate(large_path, large_mb * MB, seed=2)
        large_id, large_ingest = register(owner, large_path, env)
        large = pretrain(seed, large_id, env) | large_ingest

    slope = (large["peak_rss_mb"] - small["peak_rss_mb"]) / (large["corpus_mb"] - small["corpus_mb"])
    note = (
        ""
        if large_mb >= 1000
        else (
            f" (1 GB would take ~{1000 / rate + fixed:.0f} s to tokenize and train here at {rate} MB/s: "
            f"{large_mb} MB fits the {BUDGET_SECONDS:.0f} s budget)"
        )
    )
    print(
        f"BENCH corpus {large['corpus_mb']:.0f} MB: peak RSS {large['peak_rss_mb']} MB | baseline "
        f"({small['corpus_mb']:.0f} MB): {small['peak_rss_mb']} MB; slope {slope * 1000:+.1f} MB of RSS per GB of "
        f"text{note}"
    )
    print(
        f"BENCH corpus tokenization: {large['tokenize_mb_s']} MB/s ({large['tokenize_tokens_s']:,} tokens/s) on "
        f"{large['corpus_mb']:.0f} MB | baseline ({small['corpus_mb']:.0f} MB): {small['tokenize_mb_s']} MB/s"
    )
    print(
        f"BENCH corpus ingest peak RSS: {large['ingest_peak_rss_mb']} MB for {large['corpus_mb']:.0f} MB | "
        f"baseline: {small['ingest_peak_rss_mb']} MB for {small['corpus_mb']:.0f} MB"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "hyperparameters": HP,
                "figures": {
                    "baseline": small,
                    "second_job_on_baseline": again,
                    "large": large,
                    "rss_slope_mb_per_gb": round(slope * 1000, 1),
                    "projected_1gb_seconds": round(1000 / rate + fixed),
                },
            },
            indent=2,
        )
        + "\n"
    )
    assert again["reused_token_files"] and "tokenize_seconds" not in again
    assert large["peak_rss_mb"] * 2**20 < RSS_LIMIT
    # Memory does not grow with the corpus: a tenth of the baseline's RSS is the noise allowed for the larger run.
    assert large["peak_rss_mb"] < small["peak_rss_mb"] * 1.1
