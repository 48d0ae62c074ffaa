from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
