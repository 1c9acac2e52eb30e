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


def _test_names() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "tests" / "workers").glob("test_*.py"))


def test_every_registry_entry_has_its_code_and_a_test() -> None:
    """One registry (backend/method/registry.py): each objective names a recipe per job kind, each method a worker
    function (and a PEFT config class, for a PEFT method), and each has a test on a tiny model named after it."""
    import importlib
    import re

    import peft

    from backend.method.registry import METHODS, OBJECTIVES
    from backend.method.settings import MethodSettings

    tests = _test_names()
    for objective in OBJECTIVES.values():
        assert objective.recipes, objective.name
        for module in objective.recipes.values():
            assert callable(importlib.import_module(module).run), module
        if objective.dry_run is not None:
            module, name = objective.dry_run.split(":")
            assert callable(getattr(importlib.import_module(module), name)), objective.dry_run
        assert re.search(rf"def test_(\w*_)?{objective.name}(_\w*)?\(", tests), f"no test named after {objective.name}"
    for method in METHODS.values():
        module, name = method.worker.split(":")
        assert callable(getattr(importlib.import_module(module), name)), method.worker
        assert issubclass(method.settings, MethodSettings), method.name
        assert set(method.objectives) <= set(OBJECTIVES), method.name
        if method.peft_config is not None:
            assert issubclass(getattr(peft, method.peft_config), peft.PeftConfig), method.peft_config
        assert method.mergeable or not method.adapter or method.merge_note, f"{method.name}: say why it cannot merge"
        assert re.search(rf"def test_(\w*_)?{method.name}(_\w*)?\(", tests), f"no test named after {method.name}"


def test_no_second_list_of_objectives_or_methods() -> None:
    """Outside the registry, no source file spells out the objectives or the methods as a list."""
    import re

    from backend.method.registry import METHODS, OBJECTIVES

    sources = [
        p
        for folder in ("backend", "workers", "frontend/templates", "frontend/static/js")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".js", ".html") and p.parent.name != "method"
    ]
    for names in (list(OBJECTIVES), [m for m in METHODS if m != "full"]):
        # Three or more of the names quoted close together is a list (or a map) of them.
        name = rf"[\"'](?:{'|'.join(names)})[\"']"
        pattern = re.compile(rf"{name}[^\n]{{0,80}}{name}[^\n]{{0,80}}{name}")
        offenders = [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text())]
        assert offenders == [], offenders
    # Nor does a template write out one option of them (a <select> lists them one per line).
    from backend.dataset.formats import SHAPES

    names = (set(OBJECTIVES) | set(METHODS)) - set(SHAPES)  # "classification" is a dataset shape too
    option = re.compile(rf"<option value=\"(?:{'|'.join(names)})\"")
    templates = [p for p in sources if p.suffix == ".html"]
    assert [str(p.relative_to(ROOT)) for p in templates if option.search(p.read_text())] == []


def test_the_readme_has_a_row_for_every_method() -> None:
    """The README's methods table is written by hand: every method of the registry has its row, with its share."""
    from backend.method.registry import METHODS

    readme = (ROOT / "README.md").read_text()
    for method in METHODS.values():
        row = next((line for line in readme.splitlines() if line.strip().startswith(f"| `{method.name}` |")), None)
        assert row is not None, f"README: no row for method {method.name}"
        assert method.share.replace("-", "\u2013") in row, f"README: the row of {method.name} gives another share"
