from typing import Any

from fastapi import APIRouter

from backend.deps import CurrentUser
from backend.method import registry

router = APIRouter(prefix="/api/methods", tags=["methods"])


@router.get("")
def list_methods(user: CurrentUser) -> dict[str, Any]:
    """Every objective and method the studio trains: the data shapes, job kinds and objectives each takes, what it
    needs of a worker, whether its adapter merges into the base, and the JSON schema of its settings
    (`method_config` / `objective_config` of a job)."""
    return registry.catalog()
