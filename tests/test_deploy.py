"""The deployment files: docker-compose.yml, the Dockerfiles, .dockerignore and .env.example.

Parsed and checked here without Docker; `docker compose config` and `docker build` run only where a Docker
client (and for builds, a daemon) is reachable, and skip naming what is missing otherwise.
"""

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.config import REPO_ROOT, Settings
from tests.conftest import PG_ADMIN_URL, REDIS_URL, _require_services

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILES = {"api": REPO_ROOT / "docker" / "api.Dockerfile", "worker": REPO_ROOT / "docker" / "worker.Dockerfile"}
STUDIO_SERVICES = ("api", "worker", "analysis-worker")
# Modules of the `worker` and `qlora` extras: none may be needed by backend/ (the API image has none of them).
ML_MODULES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "accelerate", "trl", "gguf", "datasketch")
INSTALLS = re.compile(r"\b(pip3?|uv|poetry|conda|apt-get|apt|apk)\s+(install|add|sync)\b|\bmake\s+install\b")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|:?\?[^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def setting_env_names() -> dict[str, Any]:
    """STUDIO_* name → the setting's default, for every field of the settings class."""
    return {f"STUDIO_{name.upper()}": field.default for name, field in Settings.model_fields.items()}


def env_example() -> dict[str, str]:
    """NAME → value of every assignment in .env.example, commented out or not."""
    lines = (REPO_ROOT / ".env.example").read_text().splitlines()
    found = (re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip()) for line in lines)
    return {m[1]: m[2] for m in found if m}


def as_env(default: Any) -> str:
    return str(default).lower() if isinstance(default, bool) else str(default)


def interpolate(value: str) -> str:
    """A compose value with each ${VAR:-default} replaced by its default, as compose does with no .env."""
    return VARIABLE.sub(lambda m: m[3] or "", value)


def commands(service: dict[str, Any]) -> list[str]:
    """The service's command, entrypoint and health check, each as one string."""
    found = [service.get("command"), service.get("entrypoint"), (service.get("healthcheck") or {}).get("test")]
    return [" ".join(c) if isinstance(c, list) else c for c in found if c]


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    # A fixed project name keeps the volume names the README's backup commands use.
    assert compose["name"] == "fine-tuning-studio"
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "minio", "minio-init", *STUDIO_SERVICES, "flower"}
    assert services["flower"]["profiles"] == ["flower"]
    assert all("profiles" not in s for name, s in services.items() if name != "flower")
    assert services["worker"]["command"] == ["studio", "worker"]
    # The analysis queue carries analyses, imports, exports and playground answers (backend/work/kinds.py).
    assert services["analysis-worker"]["command"] == ["studio", "worker", "--analysis"]
    assert services["postgres"]["volumes"] == ["pg-data:/var/lib/postgresql/data"]


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", *STUDIO_SERVICES):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert "/api/health" in " ".join(services["api"]["healthcheck"]["test"])
    healthy = {"condition": "service_healthy"}
    assert services["api"]["depends_on"] == {
        "postgres": healthy,
        "redis": healthy,
        "minio-init": {"condition": "service_completed_successfully"},
    }
    assert services["minio"]["healthcheck"]["test"][0] == "CMD"
    assert services["minio-init"]["depends_on"] == {"minio": healthy}
    assert services["minio"]["volumes"] == ["minio-data:/data"]
    # Workers register in a table the API's migrations create: they start once the API is healthy.
    for name in ("worker", "analysis-worker"):
        assert services[name]["depends_on"] == {"api": healthy}
        assert services[name]["healthcheck"]["test"][-1] == "/app/docker/worker_healthcheck.py"
        assert (REPO_ROOT / "docker" / "worker_healthcheck.py").is_file()


def test_gpu_reservation(compose: dict[str, Any]) -> None:
    services = compose["services"]
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert VARIABLE.fullmatch(device["count"]), "the GPU count comes from a variable"
    assert interpolate(device["count"]) == "all"
    assert "deploy" not in services["analysis-worker"]
    # On a host whose default runtime is nvidia, only this keeps the short tasks off the training GPUs.
    assert services["analysis-worker"]["environment"]["CUDA_VISIBLE_DEVICES"] == ""


def test_no_container_installs_packages(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for command in commands(service):
            assert not INSTALLS.search(command), f"{name} installs packages at start: {command}"
    # The pattern catches what the old compose file did.
    assert INSTALLS.search("sh -c 'apt-get install -y make && make install && .venv/bin/studio api'")
    for name in STUDIO_SERVICES:
        # The code is in the image; only the shared data volume is mounted (no `.:/app` bind mount).
        assert compose["services"][name]["volumes"] == ["studio-data:/data"], name


def test_images_built_from_the_dockerfiles_and_tagged(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, dockerfile in (("api", "api"), ("worker", "worker"), ("analysis-worker", "worker")):
        build = services[name]["build"]
        assert build["context"] == "."
        assert REPO_ROOT / build["dockerfile"] == DOCKERFILES[dockerfile]
        assert re.fullmatch(rf"fine-tuning-studio-{dockerfile}:latest", interpolate(services[name]["image"]))
    assert services["worker"]["image"] == services["analysis-worker"]["image"]


def test_environment_names_are_settings(compose: dict[str, Any]) -> None:
    known = setting_env_names()
    for name in STUDIO_SERVICES:
        env = compose["services"][name]["environment"]
        assert {k for k in env if k.startswith("STUDIO_")} <= set(known), name
        assert env["STUDIO_DATA_DIR"] == "/data"
        assert env["STUDIO_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["STUDIO_BROKER_URL"] == env["STUDIO_REDIS_URL"] == "redis://redis:6379/0"
        # Objects in MinIO's bucket, with its root credentials, the bucket minio-init creates.
        assert env["STUDIO_STORAGE_URL"] == "s3://${S3_BUCKET:-studio}/"
        assert env["STUDIO_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == compose["services"]["minio"]["environment"]["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == compose["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
        assert compose["services"][name]["env_file"] == [{"path": ".env", "required": False}]


def test_env_example_documents_every_setting() -> None:
    documented = env_example()
    settings = setting_env_names()
    missing = sorted(set(settings) - set(documented))
    assert not missing, f"settings missing from .env.example: {missing}"
    stale = sorted(n for n in documented if n.startswith("STUDIO_") and n not in settings)
    assert not stale, f".env.example documents settings that do not exist: {stale}"
    wrong = {n: (documented[n], as_env(d)) for n, d in settings.items() if documented[n] != as_env(d)}
    assert not wrong, f".env.example shows other defaults than backend/config.py: {wrong}"


def test_env_example_comments_each_setting() -> None:
    lines = [line.strip() for line in (REPO_ROOT / ".env.example").read_text().splitlines()]
    assignment = re.compile(r"#?\s*[A-Z][A-Z0-9_]*=.*")
    for i, line in enumerate(lines):
        if not assignment.fullmatch(line):
            continue
        above = i - 1
        while above >= 0 and assignment.fullmatch(lines[above]):
            above -= 1  # settings that share one comment (host and port)
        assert lines[above].startswith("# ") and len(lines[above]) > 10, f"no comment above {line}"


def test_env_example_documents_compose_variables(compose: dict[str, Any]) -> None:
    documented = env_example()
    used = {m[1]: m[3] or "" for m in VARIABLE.finditer(COMPOSE.read_text())}
    assert used, "the compose file reads variables"
    for name, default in used.items():
        assert documented.get(name) == default, f"{name} (default {default!r}) not documented as such in .env.example"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(line.split()[0].upper(), line) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_multi_stage_non_root_with_health_check(image: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    froms = [line for op, line in instructions if op == "FROM"]
    assert len(froms) >= 2 and " AS builder" in froms[0] and " AS runtime" in froms[-1]
    runtime = instructions[[line for _, line in instructions].index(froms[-1]) :]
    assert any(op == "COPY" and "--from=builder" in line for op, line in runtime), "venv copied from the builder"
    users = [line.split()[1] for op, line in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime runs as a non-root user"
    assert any(op == "HEALTHCHECK" for op, _ in runtime)
    assert [line for op, line in runtime if op == "CMD"][-1].startswith('CMD ["studio"')
    # Python packages come from the builder's venv (system packages, like a compiler, may be installed here).
    assert not any(op == "RUN" and re.search(r"\bpip3? install\b", line) for op, line in runtime)


def test_api_image_has_no_ml_stack_and_worker_image_picks_torch() -> None:
    runs = " ".join(line for op, line in dockerfile_instructions(DOCKERFILES["api"]) if op == "RUN")
    assert "pip install -e ." in runs
    assert "torch" not in runs and "[worker" not in runs
    worker = DOCKERFILES["worker"].read_text()
    assert "ARG TORCH_VARIANT=cuda" in worker
    assert re.search(r'cpu\) pip install "torch==\$\{TORCH_VERSION\}" --index-url "\$\{TORCH_CPU_INDEX\}"', worker)


def test_ml_stack_is_the_worker_extra() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    name = re.compile(r"[A-Za-z0-9_.-]+")
    base = {name.match(d)[0].replace("-", "_") for d in project["dependencies"]}  # type: ignore[index]
    extra = {name.match(d)[0].replace("-", "_") for d in project["optional-dependencies"]["worker"]}  # type: ignore[index]
    assert not base & set(ML_MODULES)
    assert set(ML_MODULES) <= extra
    # `make install` (hence `make run` and `make test`) still installs everything.
    assert '-e ".[worker,dev]"' in (REPO_ROOT / "Makefile").read_text()


def test_backend_serves_without_the_ml_stack(tmp_path: Path) -> None:
    """What the API image runs: the app and the CLI, with every worker-extra module made unimportable."""
    script = (
        "import sys\n"
        f"for name in {ML_MODULES!r}: sys.modules[name] = None\n"
        "import backend.cli, backend.main\n"
        "from fastapi.testclient import TestClient\n"
        "backend.cli.cmd_migrate(None)\n"
        "with TestClient(backend.main.create_app()) as client:\n"
        "    assert client.get('/api/health').json()['status'] == 'ok'\n"
        "    assert client.get('/login').status_code == 200\n"
        "print('served')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")} | {"STUDIO_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "served" in done.stdout, done.stderr[-3000:]


def ignored(pattern_lines: list[str], path: str) -> bool:
    """Whether .dockerignore leaves `path` out (the last matching pattern wins; `!` re-includes)."""
    verdict = False
    for pattern in pattern_lines:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            verdict = not negate
    return verdict


def test_dockerignore() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (".git/HEAD", ".venv/bin/python", "data/studio.db", "tests/bench/results/sft.json", ".env"):
        assert ignored(patterns, path), path
    for path in (
        "pyproject.toml",
        "backend/main.py",
        "workers/main.py",
        "migrations/env.py",
        "frontend/templates/base.html",
        "docker/worker_healthcheck.py",
    ):
        assert not ignored(patterns, path), path


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    script = REPO_ROOT / "docker" / "worker_healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env=base | {"PYTHONPATH": str(REPO_ROOT)} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_healthcheck_embedded_and_unreachable_broker(tmp_path: Path) -> None:
    assert healthcheck({"STUDIO_DATA_DIR": str(tmp_path)}).returncode == 0
    down = healthcheck({"STUDIO_DATA_DIR": str(tmp_path), "STUDIO_BROKER_URL": "redis://127.0.0.1:9/0"})
    assert down.returncode == 1
    assert "unhealthy" in down.stderr


@pytest.mark.server
def test_worker_healthcheck_against_postgres_and_redis(tmp_path: Path) -> None:
    _require_services()
    database = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    env = {"STUDIO_DATA_DIR": str(tmp_path), "STUDIO_DATABASE_URL": database, "STUDIO_BROKER_URL": f"{REDIS_URL}/0"}
    done = healthcheck(env)
    assert done.returncode == 0, done.stderr
    wrong_db = healthcheck(env | {"STUDIO_DATABASE_URL": database.replace(":5432", ":9")})
    assert wrong_db.returncode == 1 and "unhealthy" in wrong_db.stderr


def docker_problem(*args: str) -> str | None:
    """Why `docker ARGS` cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"`docker {' '.join(args)}` did not answer in 30 s"
    if done.returncode != 0:
        return f"`docker {' '.join(args)}` failed: {(done.stderr or done.stdout).strip()[:300]}"
    return None


def test_compose_config_validates() -> None:
    """The Compose file against Compose's own schema and interpolation (no daemon needed)."""
    problem = docker_problem("compose", "version")
    if problem:
        pytest.skip(f"docker compose is not available: {problem}")
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--profile", "flower", "config", "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_images_build() -> None:
    """Both images build (the worker in its CPU variant: the CUDA wheels are GBs), run as a non-root user, and
    the API image has no torch."""
    problem = docker_problem("info")
    if problem:
        pytest.skip(f"no Docker daemon reachable: {problem}")
    tags = {"api": "fine-tuning-studio-api:test", "worker": "fine-tuning-studio-worker:test-cpu"}
    for image, tag in tags.items():
        args = ["--build-arg", "TORCH_VARIANT=cpu"] if image == "worker" else []
        build = ["docker", "build", "-f", str(DOCKERFILES[image]), "-t", tag, *args, str(REPO_ROOT)]
        done = subprocess.run(build, capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, done.stderr[-4000:]
    uid = subprocess.run(["docker", "run", "--rm", tags["api"], "id", "-u"], capture_output=True, text=True)
    assert uid.stdout.strip() not in ("", "0")
    no_torch = ["docker", "run", "--rm", tags["api"], "python", "-c", "import torch"]
    assert subprocess.run(no_torch, capture_output=True).returncode != 0
    torch = ["docker", "run", "--rm", tags["worker"], "python", "-c", "import torch, workers.main"]
    assert subprocess.run(torch, capture_output=True).returncode == 0
