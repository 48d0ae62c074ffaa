from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    detail: str = Field(examples=["Dataset not found"])


class MessageResponse(BaseModel):
    message: str
