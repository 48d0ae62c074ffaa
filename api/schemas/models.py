from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from training import s3 as s3_layout  # the S3 key layout

if TYPE_CHECKING:
    from api.models import CatalogModelRow

ModelType = Literal["video_classification", "video_captioning"]
BaseArchitecture = Literal["flamingo", "video_llama"]


class SupportedLoraParams(BaseModel):
    min_rank: int
    max_rank: int
    default_alpha: int


class ModelSummary(BaseModel):
    id: str = Field(examples=["flamingo-tiny-captioning"])
    name: str
    description: str
    model_type: ModelType
    base_architecture: BaseArchitecture
    version: str
    tiny: bool = Field(description="Built from a config (random init) for CPU runs; no published checkpoint.")


class ModelDetail(ModelSummary):
    supported_lora_params: SupportedLoraParams
    default_target_modules: list[str]
    allowed_target_modules: list[str]
    architecture_class: str = Field(examples=["IdeficsForVisionText2Text"])
    checkpoint: str | None = Field(description="Published checkpoint a production deployment copies into S3.")
    weights_uri: str = Field(examples=["s3://qlora/models/flamingo-tiny-captioning/"])

    @classmethod
    def from_row(cls, row: CatalogModelRow, bucket: str) -> ModelDetail:
        """The catalog entry `row`; its weights are under `models/{id}/` of `bucket`."""
        return cls(
            id=row.id,
            name=row.name,
            description=row.description,
            model_type=row.model_type,  # type: ignore[arg-type]
            base_architecture=row.base_architecture,  # type: ignore[arg-type]
            version=row.version,
            tiny=row.tiny,
            supported_lora_params=SupportedLoraParams(
                min_rank=row.min_rank, max_rank=row.max_rank, default_alpha=row.default_alpha
            ),
            default_target_modules=list(row.default_target_modules),
            allowed_target_modules=list(row.allowed_target_modules),
            architecture_class=row.architecture_class,
            checkpoint=row.checkpoint,
            weights_uri=s3_layout.s3_uri(bucket, s3_layout.model_prefix(row.id)),
        )
