from fastapi import APIRouter

from backend.deps import CurrentUser, SessionDep
from backend.model import service
from backend.model.presets import PRESETS, parameter_count
from backend.model.schemas import ModelList, ModelRead, PresetRead
from backend.schemas import IdPath

router = APIRouter(prefix="/api", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(session: SessionDep, user: CurrentUser) -> ModelList:
    return ModelList(items=[ModelRead.model_validate(m) for m in service.list_models(session, user=user)])


@router.get("/models/{model_id}", response_model=ModelRead)
def get_model(model_id: IdPath, session: SessionDep, user: CurrentUser) -> ModelRead:
    return ModelRead.model_validate(service.visible_model(session, user=user, model_id=model_id))


@router.get("/architectures", response_model=list[PresetRead])
def list_architectures(user: CurrentUser) -> list[PresetRead]:
    """Presets a pretrain job can start from, with their parameter counts."""
    return [PresetRead(name=k, parameters=parameter_count(v), config=v) for k, v in PRESETS.items()]
