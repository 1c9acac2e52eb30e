"""The registry of methods and objectives through the API: GET /api/methods lists every entry with its settings'
schema; a job's method_config and objective_config are validated by the entry's own settings class (bad values and
unknown keys are a 422 naming the field, old flat keys still land in their place); the estimate counts what each
method trains as its settings do; and the new-job form offers every entry with an input for each of its settings."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.db import Model, User, session_scope
from backend.method import registry
from backend.method.shape import model_shape
from tests.api.test_job_objectives import finetune, upload

FIXTURES = Path(__file__).parent.parent / "fixtures"
# A small Llama-style config (GQA: 2 key/value heads of 4), enough for every method's count of its parameters.
CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "tie_word_embeddings": False,
    "max_position_embeddings": 512,
}


@pytest.fixture
def base_model(client: TestClient, tmp_path: Path) -> int:
    """A base of the test user with a config.json (the estimate reads its sizes; nothing loads its weights)."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps(CONFIG))
    with session_scope() as s:
        owner = s.query(User).one()
        s.add(Model(owner_id=owner.id, name="base", source="local", path=str(tmp_path / "base")))
    return int(client.get("/api/models").json()["items"][0]["id"])


@pytest.fixture
def sft_data(client: TestClient) -> int:
    return upload(client, FIXTURES / "alpaca_small.json")


def refused(client: TestClient, body: dict[str, Any], field: str) -> str:
    """POST the job, expect a 422 naming `field`; the message."""
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 422, res.text
    assert res.json()["field"] == field, res.json()
    return str(res.json()["detail"])


def test_the_catalog_lists_every_entry_with_its_settings_schema(client: TestClient) -> None:
    res = client.get("/api/methods")
    assert res.status_code == 200
    body = res.json()
    assert [m["name"] for m in body["methods"]] == list(registry.METHODS)
    assert [o["name"] for o in body["objectives"]] == list(registry.OBJECTIVES)
    for entry in body["methods"]:
        spec = registry.METHODS[entry["name"]]
        assert entry["settings"] == spec.settings.model_json_schema()
        assert (entry["mergeable"], entry["merge_note"]) == (spec.mergeable, spec.merge_note)
    for entry in body["objectives"]:
        assert entry["settings"] == registry.OBJECTIVES[entry["name"]].settings.model_json_schema()
    by_name = {m["name"]: m for m in body["methods"]}
    assert by_name["prefix_tuning"]["gradient_checkpointing"] is False and not by_name["prompt_tuning"]["mergeable"]
    assert client.get("/api/methods", headers={"Authorization": ""}).status_code == 401


def test_method_config_is_stored_with_its_defaults(client: TestClient, base_model: int, sft_data: int) -> None:
    res = client.post("/api/jobs", json=finetune(sft_data, base_model, method="lora", method_config={"r": 16}))
    assert res.status_code == 201, res.text
    job = res.json()
    assert job["method_config"] == {
        "r": 16,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "target_modules": None,
        "use_rslora": False,
        "use_dora": False,
    }
    assert job["objective"] == "sft" and job["objective_config"] == {}
    # Old-style flat keys still land in the method's settings.
    legacy = client.post("/api/jobs", json=finetune(sft_data, base_model, hyperparameters={"lora_r": 12}))
    assert legacy.status_code == 201, legacy.text
    assert legacy.json()["method_config"]["r"] == 12 and "lora_r" not in legacy.json()["hyperparameters"]
    # Every job stored before the registry held all the flat keys at their defaults: a body built from one (here
    # DPO's and freeze's defaults on a LoRA SFT job) carries nothing foreign and is taken.
    stored = {"lora_r": 8, "freeze_trainable_layers": 2, "dpo_beta": 0.1, "kto_beta": 0.1, "max_steps": 3}
    old = client.post("/api/jobs", json=finetune(sft_data, base_model, hyperparameters=stored))
    assert old.status_code == 201, old.text
    assert old.json()["method_config"]["r"] == 8 and old.json()["objective_config"] == {}


def test_bad_method_settings_name_their_field(client: TestClient, base_model: int, sft_data: int) -> None:
    detail = refused(client, finetune(sft_data, base_model, method_config={"r": 0}), "method_config.r")
    assert "greater than or equal to 1" in detail
    refused(client, finetune(sft_data, base_model, method_config={"rank": 4}), "method_config.rank")
    # A key of another method, written the old way, is refused by name rather than dropped...
    body = finetune(sft_data, base_model, method="lora", hyperparameters={"freeze_trainable_layers": 3})
    assert "freeze_trainable_layers" in refused(client, body, "hyperparameters.freeze_trainable_layers")
    # ... and the same setting given twice, the old way and the new, must agree.
    body = finetune(sft_data, base_model, hyperparameters={"lora_r": 4}, method_config={"r": 8})
    assert "old-style" in refused(client, body, "method_config.r")
    # A cross-field check of the settings class: init "text" needs the text.
    body = finetune(sft_data, base_model, method="prompt_tuning", method_config={"init": "text"})
    assert "init_text is required" in refused(client, body, "method_config")
    assert client.get("/api/jobs").json()["items"] == []


def test_a_method_refuses_what_it_cannot_train(client: TestClient, base_model: int, sft_data: int) -> None:
    pairs = upload(client, FIXTURES / "formats/preference.jsonl")
    detail = refused(client, finetune(pairs, base_model, method="prompt_tuning", objective="dpo"), "method")
    assert "does not train objective dpo" in detail
    body = finetune(sft_data, base_model, method="prefix_tuning", hyperparameters={"gradient_checkpointing": True})
    assert "gradient_checkpointing" in refused(client, body, "hyperparameters.gradient_checkpointing")


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("ia3", {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
        ("prompt_tuning", {"num_virtual_tokens": 8}),
        ("prefix_tuning", {"num_virtual_tokens": 8, "prefix_projection": True}),
    ],
)
def test_new_methods_train_sft_and_the_estimate_counts_their_parameters(
    client: TestClient, base_model: int, sft_data: int, method: str, config: dict[str, Any]
) -> None:
    body = finetune(sft_data, base_model, method=method, method_config=config)
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    job = res.json()
    settings = registry.METHODS[method].settings.model_validate(config)
    assert (job["method"], job["objective"], job["method_config"]) == (method, "sft", settings.model_dump())
    est = client.post("/api/jobs/estimate", json=body)
    assert est.status_code == 200, est.text
    shape = model_shape(CONFIG)
    wanted = settings.trainable_parameters(shape, shape.total_parameters())  # type: ignore[attr-defined]
    assert 0 < wanted < shape.total_parameters()
    assert est.json()["trainable_parameters"] == wanted
    # Fewer virtual tokens, fewer trained parameters: the estimate follows the settings.
    if "num_virtual_tokens" in config:
        fewer = {**body, "method_config": {**config, "num_virtual_tokens": 4}}
        assert client.post("/api/jobs/estimate", json=fewer).json()["trainable_parameters"] < wanted


def test_a_clone_merges_method_config_over_the_source(client: TestClient, base_model: int, sft_data: int) -> None:
    source = client.post("/api/jobs", json=finetune(sft_data, base_model, method_config={"r": 16})).json()
    res = client.post(f"/api/jobs/{source['id']}/clone", json={"method_config": {"lora_alpha": 64}})
    assert res.status_code == 201, res.text
    assert res.json()["method_config"] == {**source["method_config"], "lora_alpha": 64}
    bad = client.post(f"/api/jobs/{source['id']}/clone", json={"method_config": {"r": 0}})
    assert bad.status_code == 422 and bad.json()["field"] == "method_config.r", bad.text


def test_the_form_shows_every_registry_entry_and_setting(client: TestClient) -> None:
    page = client.get("/jobs/new").text
    for name, method in registry.METHODS.items():
        assert f'<option value="{name}"' in page, name
        for field in method.settings.model_fields:
            input_id = f"mc-{name}-{field}"
            assert f'id="{input_id}"' in page and f'data-method="{name}" data-key="{field}"' in page, input_id
    for name, objective in registry.OBJECTIVES.items():
        assert f'<option value="{name}"' in page, name
        for field in objective.settings.model_fields:
            input_id = f"oc-{name}-{field}"
            assert f'id="{input_id}"' in page and f'data-objective="{name}" data-key="{field}"' in page, input_id
    # Literal settings are a choice, switches a checkbox.
    assert '<select id="mc-prompt_tuning-init"' in page
    assert 'id="mc-prefix_tuning-prefix_projection" name="mc-prefix_tuning-prefix_projection" type="checkbox"' in page


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_virtual_tokens_count_against_the_models_positions(
    client: TestClient, base_model: int, sft_data: int, method: str
) -> None:
    """Virtual tokens sit before every sequence: max_length plus them must fit the base's positions (512 here)."""
    config = {"num_virtual_tokens": 20}
    body = finetune(sft_data, base_model, method=method, method_config=config, hyperparameters={"max_length": 500})
    detail = refused(client, body, "method_config.num_virtual_tokens")
    assert "520 positions" in detail and "at most 512" in detail
    fits = client.post("/api/jobs/estimate", json={**body, "hyperparameters": {"max_length": 492}})
    assert fits.status_code == 200, fits.text
    # LoRA adds no position: the same max_length is fine.
    assert client.post("/api/jobs/estimate", json={**body, "method": "lora", "method_config": {}}).status_code == 200
