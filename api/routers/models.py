"""`/v1/models`: the catalog of base models users may fine-tune."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.models import CatalogModelRow
from api.schemas.common import ErrorResponse
from api.schemas.models import ModelDetail

router = APIRouter(prefix="/models", tags=["models"], responses={401: {"model": ErrorResponse}})


@router.get("/allowed", response_model=list[ModelDetail], summary="Models available for QLoRA fine-tuning")
def list_allowed(_: CurrentUser, session: SessionDep, settings: SettingsDep) -> list[ModelDetail]:
    rows = session.scalars(
        select(CatalogModelRow).where(CatalogModelRow.active.is_(True)).order_by(CatalogModelRow.id)
    )
    return [ModelDetail.from_row(row, settings.s3_bucket) for row in rows]


@router.get(
    "/{model_id}",
    response_model=ModelDetail,
    responses={404: {"model": ErrorResponse, "description": "Model not found"}},
    summary="One allowed model with its LoRA limits",
)
def get_model(model_id: str, _: CurrentUser, session: SessionDep, settings: SettingsDep) -> ModelDetail:
    row = session.get(CatalogModelRow, model_id)
    if row is None or not row.active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"Model {model_id[:128]!r} not found")
    return ModelDetail.from_row(row, settings.s3_bucket)
