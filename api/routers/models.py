"""`/v1/models`: the catalog of base models users may fine-tune."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.models import CatalogModelRow
from api.routers.openapi_doc import MODEL_DETAIL, UNAUTHORIZED, error, ok_example
from api.schemas.models import ModelDetail

router = APIRouter(prefix="/models", tags=["models"], responses=UNAUTHORIZED)


@router.get(
    "/allowed",
    response_model=list[ModelDetail],
    responses={200: ok_example([MODEL_DETAIL])},
    operation_id="listModels",
    summary="Models available for QLoRA fine-tuning",
    description="The active entries of the model catalog (`training/catalog.toml`), by id: each with its type "
    "(`video_classification` or `video_captioning`), architecture, LoRA rank range, default alpha and the "
    "layers LoRA may target. `model_id` of `POST /v1/trainings` is one of these ids.",
)
def list_allowed(_: CurrentUser, session: SessionDep, settings: SettingsDep) -> list[ModelDetail]:
    rows = session.scalars(
        select(CatalogModelRow).where(CatalogModelRow.active.is_(True)).order_by(CatalogModelRow.id)
    )
    return [ModelDetail.from_row(row, settings.s3_bucket) for row in rows]


@router.get(
    "/{model_id}",
    response_model=ModelDetail,
    responses={200: ok_example(MODEL_DETAIL),
               404: error("No active catalog model has this id", "Model 'gpt-5' not found")},
    summary="One allowed model with its LoRA limits",
    description="One catalog entry: `supported_lora_params` bounds `lora_rank` and gives the default "
    "`lora_alpha`; `default_target_modules` are used when a job names none.",
)
def get_model(model_id: str, _: CurrentUser, session: SessionDep, settings: SettingsDep) -> ModelDetail:
    row = session.get(CatalogModelRow, model_id)
    if row is None or not row.active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"Model {model_id[:128]!r} not found")
    return ModelDetail.from_row(row, settings.s3_bucket)
