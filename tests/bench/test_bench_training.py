"""Training throughput on the real corpora in ../shared/datasets: pretrain `tiny` vs LoRA and full fine-tuning.

Prints steps/s, tokens/s and wall time per run (CPU here; CUDA where a worker has one). Skips when the shared
datasets are absent.
"""

import time
from pathlib import Path

import pytest

from tests.support import StudioProcess

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
SHAKESPEARE = SHARED / "pretrain" / "tinyshakespeare.txt"
ALPACA = SHARED / "instruct" / "alpaca_en_demo.json"


@pytest.fixture(params=["sqlite"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return {"STUDIO_DATA_DIR": str(tmp_path / "data")}


def _run(studio: StudioProcess, body: dict) -> tuple[dict, float]:
    client = studio.client()
    job = client.post("/api/jobs", json=body).json()
    t0 = time.perf_counter()
    job = studio.wait_job(client, job["id"], ("succeeded", "failed", "cancelled"), timeout=900)
    assert job["status"] == "succeeded", client.get(f"/api/jobs/{job['id']}/events").json()
    return job, time.perf_counter() - t0


@pytest.mark.skipif(not SHAKESPEARE.exists() or not ALPACA.exists(), reason="../shared/datasets not present")
def test_pretrain_vs_finetune_throughput(studio: StudioProcess) -> None:
    client = studio.client()
    text = client.post("/api/datasets", files={"file": ("tinyshakespeare.txt", SHAKESPEARE.read_bytes())}).json()
    alpaca = client.post("/api/datasets", files={"file": ("alpaca_en_demo.json", ALPACA.read_bytes())}).json()
    hp = {"max_steps": 200, "max_length": 128, "batch_size": 16, "learning_rate": 2e-3, "warmup_steps": 10}
    rows = []
    for arch in ("tiny", "small"):
        steps = 200 if arch == "tiny" else 50
        job, wall = _run(
            studio,
            {
                "kind": "pretrain",
                "architecture": arch,
                "dataset_id": text["id"],
                "hyperparameters": {**hp, "max_steps": steps},
            },
        )
        rows.append((f"pretrain {arch}", job, wall, steps * hp["batch_size"] * hp["max_length"]))
    base = next(m for m in client.get("/api/models").json()["items"] if m["job_id"] == rows[0][1]["id"])
    for method in ("lora", "full"):
        ft_hp = {"max_steps": 50, "max_length": 256, "batch_size": 8, "learning_rate": 2e-4}
        body = {"kind": "finetune", "dataset_id": alpaca["id"], "base_model": base["id"], "method": method}
        job, wall = _run(studio, {**body, "objective": "sft", "hyperparameters": ft_hp})
        rows.append((f"finetune {method} sft (tiny base)", job, wall, None))
    print()
    for name, job, wall, tokens in rows:
        params = job["resolved_config"]["parameters"]
        extra = f", {tokens / wall:,.0f} tokens/s" if tokens else ""
        print(
            f"BENCH {name}: {job['total_steps']} steps in {wall:.1f} s wall "
            f"({job['total_steps'] / wall:.1f} steps/s{extra}); trainable {params['trainable']:,} of "
            f"{params['total']:,}; final loss {job['final_loss']:.3f}, eval {job['final_eval_loss']:.3f}"
        )
