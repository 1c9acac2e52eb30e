"""Every fine-tuning method on a real pretrained model: SmolLM2-135M-Instruct (imported with `studio models
import-demo`) on the shared datasets: LoRA SFT (alpaca), DPO (dpo_en_demo), classification (SST-2 train, scored on
SST-2 dev). Prints wall time, tokens/s and the final eval figures. Skips when the datasets or the wheel are absent.
"""

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import STUDIO, StudioProcess

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
ALPACA = SHARED / "instruct" / "alpaca_en_demo.json"
DPO = SHARED / "preference" / "dpo_en_demo.json"
SST2_TRAIN = SHARED / "classification" / "sst2_train.tsv"
SST2_DEV = SHARED / "classification" / "sst2_dev.tsv"


@pytest.fixture(params=["sqlite"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return {"STUDIO_DATA_DIR": str(tmp_path / "data")}


def _upload(client: Any, path: Path) -> int:
    res = client.post("/api/datasets", files={"file": (path.name, path.read_bytes())})
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


def _run(studio: StudioProcess, body: dict[str, Any]) -> tuple[dict[str, Any], float, dict[str, float]]:
    client = studio.client()
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    t0 = time.perf_counter()
    job = studio.wait_job(client, res.json()["id"], ("succeeded", "failed", "cancelled"), timeout=1800)
    assert job["status"] == "succeeded", client.get(f"/api/jobs/{job['id']}/events").json()
    last: dict[str, float] = {}
    for m in client.get(f"/api/jobs/{job['id']}/metrics").json():
        last.update(m["values"])
    return job, time.perf_counter() - t0, last


@pytest.mark.skipif(
    not all(p.exists() for p in (ALPACA, DPO, SST2_TRAIN, SST2_DEV)), reason="../shared/datasets not present"
)
def test_methods_on_smollm2(studio: StudioProcess) -> None:
    res = subprocess.run(
        [*STUDIO, "models", "import-demo"], env=studio.env, capture_output=True, text=True, timeout=900
    )
    if res.returncode != 0:
        pytest.skip(f"the SmolLM2 demo cannot be imported here: {res.stderr[-300:]!r}")
    client = studio.client()
    base = next(m for m in client.get("/api/models").json()["items"] if m["name"].startswith("SmolLM2"))
    common = {"kind": "finetune", "base_model": base["id"], "method": "lora"}
    runs = [
        (
            "LoRA SFT, alpaca",
            {"dataset_id": _upload(client, ALPACA), "objective": "sft"},
            {"max_steps": 20, "batch_size": 4, "max_length": 256, "learning_rate": 2e-4, "eval_steps": 20},
        ),
        (
            "LoRA DPO, dpo_en_demo",
            {"dataset_id": _upload(client, DPO), "objective": "dpo"},
            {
                "max_steps": 10,
                "batch_size": 2,
                "max_length": 256,
                "learning_rate": 5e-5,
                "eval_steps": 10,
                "validation_fraction": 0.05,
            },
        ),
        (
            "LoRA classification, SST-2",
            {
                "dataset_id": _upload(client, SST2_TRAIN),
                "objective": "classification",
                "validation_dataset_id": _upload(client, SST2_DEV),
            },
            {"max_steps": 40, "batch_size": 16, "max_length": 64, "learning_rate": 5e-4, "eval_steps": 40},
        ),
    ]
    print()
    for name, body, hp in runs:
        job, wall, last = _run(studio, {**common, **body, "hyperparameters": hp, "name": name})
        params = job["resolved_config"]["parameters"]
        evals = {
            k: round(v, 4)
            for k, v in last.items()
            if k.startswith("eval_") and "runtime" not in k and "per_second" not in k
        }
        print(
            f"{name}: {hp['max_steps']} steps in {wall:.0f} s wall, "
            f"{last.get('tokens_per_second', 0):.0f} tokens/s, {params['trainable']:,} of {params['total']:,} "
            f"weights trained, peak memory {last.get('memory_mb', 0):.0f} MB, final eval {evals}"
        )
