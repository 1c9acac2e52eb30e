"""The analysis task against the database: claim once, compute with the base model's tokenizer, record the end."""

from typing import Any

from backend.dataset.analysis import params_key
from backend.db import DatasetAnalysis, Model, session_scope
from tests.workers.support import Pretrained, Seed
from workers.analysis.tasks import analyze_dataset
from workers.examples import ALPACA_TEMPLATE


def queue_analysis(dataset_id: int, kind: str, params: dict[str, Any]) -> int:
    with session_scope() as s:
        row = DatasetAnalysis(dataset_id=dataset_id, kind=kind, key=params_key(params), params=params)
        s.add(row)
        s.flush()
        return row.id


def stored(analysis_id: int) -> DatasetAnalysis:
    with session_scope() as s:
        row = s.get(DatasetAnalysis, analysis_id)
        assert row is not None
        return row


def test_stats_are_computed_once_per_delivery(seed: Seed, pretrained: Pretrained) -> None:
    params = {"base_model": pretrained.model_id, "objective": "sft", "max_length": 64, "batch_size": 8}
    analysis_id = queue_analysis(seed.alpaca_dataset_id, "stats", params)
    assert analyze_dataset(analysis_id) == "done"
    row = stored(analysis_id)
    assert row.status == "done" and row.finished_at is not None and row.error is None
    result = row.result or {}
    assert (result["records"], result["examples"], result["steps_per_epoch"]) == (40, 40, 5)
    assert result["base_model"] == pretrained.model_id
    assert set(result["tokens_by_role"]) == {"user", "assistant"}
    # Celery may deliver twice: the second delivery finds the row claimed and does nothing.
    assert analyze_dataset(analysis_id) == "skipped"


def test_render_uses_the_base_models_tokenizer(seed: Seed, pretrained: Pretrained) -> None:
    params = {"base_model": pretrained.model_id, "objective": "sft", "max_length": 64, "index": 0}
    analysis_id = queue_analysis(seed.alpaca_dataset_id, "render", params)
    assert analyze_dataset(analysis_id) == "done"
    result = stored(analysis_id).result or {}
    text = "".join(t["text"] for t in result["tokens"])
    assert text == ALPACA_TEMPLATE.format(prompt="Reverse the word: abc") + "cba<|endoftext|>"
    trained = "".join(t["text"] for t in result["tokens"] if t["trained"])
    assert trained == "cba<|endoftext|>"


def test_hygiene_of_the_text_dataset(seed: Seed) -> None:
    params = {"validation_dataset_id": seed.alpaca_dataset_id, "threshold": 0.8}
    analysis_id = queue_analysis(seed.text_dataset_id, "hygiene", params)
    assert analyze_dataset(analysis_id) == "done"
    result = stored(analysis_id).result or {}
    assert result["counts"]["validation_records"] == 40 and result["leakage"] == []
    assert set(result["drop"]) == {"exact_duplicates", "near_duplicates", "conflicting_answers", "leakage"}


def test_a_failure_is_recorded_with_its_reason(seed: Seed) -> None:
    with session_scope() as s:
        gone = Model(owner_id=seed.user_id, name="gone", source="local", path=str(seed.data_dir / "no-such-model"))
        s.add(gone)
        s.flush()
        model_id = gone.id
    params = {"base_model": model_id, "objective": "sft", "max_length": 64, "batch_size": 8}
    analysis_id = queue_analysis(seed.alpaca_dataset_id, "stats", params)
    assert analyze_dataset(analysis_id) == "failed"
    row = stored(analysis_id)
    assert row.status == "failed" and row.error and "does not exist" in row.error and row.result is None
