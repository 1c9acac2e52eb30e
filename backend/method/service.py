"""The Methods view's choices: which methods a user can compare here, the settings the runs share."""

import functools
from typing import Any

from sqlalchemy.orm import Session

from backend.db import Dataset
from backend.job.schemas import Hyperparameters
from backend.method import registry
from backend.worker.service import can_run_qlora, live_training_workers

# The settings every compared run shares; the rest keep their defaults.
SHARED_SETTINGS = ("max_steps", "learning_rate", "batch_size", "max_length")


def finetune_objective(dataset: Dataset) -> str | None:
    """The objective a fine-tune of `dataset` trains by default; None when its shape has none."""
    name = registry.default_objective(dataset.shape)
    return name if name is not None and "finetune" in registry.objective(name).kinds else None


def _input(schema: dict[str, Any]) -> dict[str, Any]:
    """An <input>'s min, max and step from a field's JSON schema, looking inside `anyOf` for an optional field."""
    found: dict[str, Any] = {"step": "any"}
    for part in [schema, *schema.get("anyOf", [])]:
        found.update({attr: part[key] for key, attr in (("minimum", "min"), ("maximum", "max")) if key in part})
        if part.get("type") == "integer":
            found["step"] = 1
    return found


@functools.cache
def shared_settings() -> list[dict[str, Any]]:
    """The shared settings' form fields: name, default, bounds and help, from Hyperparameters itself."""
    properties = Hyperparameters.model_json_schema()["properties"]
    return [
        {
            "name": name,
            "default": properties[name].get("default"),
            "help": properties[name].get("description", ""),
            **_input(properties[name]),
        }
        for name in SHARED_SETTINGS
    ]


def method_choices(session: Session) -> list[dict[str, Any]]:
    """Every fine-tune method, with why it is unavailable here (the data decides the rest, in the page)."""
    cuda = any(can_run_qlora(w) for w in live_training_workers(session))
    choices = []
    for entry in registry.catalog()["methods"]:
        if "finetune" not in entry["kinds"]:
            continue
        unavailable = ""
        if entry["requires"] == "cuda_bitsandbytes" and not cuda:
            unavailable = "needs a CUDA worker with bitsandbytes, and none is live"
        choices.append({**entry, "unavailable": unavailable})
    return choices
