"""Import direction: the web app never loads the ML stack or the workers package."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "workers")


def test_importing_the_web_app_loads_no_torch() -> None:
    code = (
        "import sys, backend.main, backend.cli; backend.main.create_app();"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_backend_sources_import_nothing_from_the_ml_stack() -> None:
    offenders = []
    for path in (ROOT / "backend").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_every_job_kind_and_objective_has_a_recipe() -> None:
    from typing import get_args

    from backend.job.schemas import JobKind, Objective
    from backend.job.service import OBJECTIVE_SHAPES
    from workers.recipes import RECIPES

    # causal_lm and sft run in the kind's recipe (pretrain / finetune); the others have their own file.
    assert set(RECIPES) == set(get_args(JobKind)) | {"dpo", "kto", "classification"}
    assert set(OBJECTIVE_SHAPES) == set(get_args(Objective))


def test_the_objective_lists_agree() -> None:
    """Until one registry replaces them: every shape has a default objective that trains on it, the chat
    objectives exist, and the wizard's JavaScript maps say what backend/job/service.py says."""
    import json
    import re
    from typing import get_args

    from backend.dataset.formats import SHAPES
    from backend.job.schemas import Objective
    from backend.job.service import DEFAULT_OBJECTIVE, OBJECTIVE_SHAPES
    from backend.playground.service import CHAT_OBJECTIVES

    assert set(DEFAULT_OBJECTIVE) == set(SHAPES)
    assert all(shape in OBJECTIVE_SHAPES[objective] for shape, objective in DEFAULT_OBJECTIVE.items())
    assert set(CHAT_OBJECTIVES) <= set(get_args(Objective))
    script = (ROOT / "frontend/static/js/job_form.js").read_text()
    for name, python in (("OBJECTIVE_SHAPES", OBJECTIVE_SHAPES), ("DEFAULT_OBJECTIVE", DEFAULT_OBJECTIVE)):
        block = re.search(rf"const {name} = (\{{.*?\}});", script, re.S)
        assert block is not None, name
        as_json = re.sub(r"(\w+):", r'"\1":', block.group(1)).replace(",\n  }", "\n  }")
        assert json.loads(as_json) == {k: list(v) if isinstance(v, tuple) else v for k, v in python.items()}, name
