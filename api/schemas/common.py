from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    detail: str = Field(examples=["Dataset not found"])


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`/`query`/`path`, then the field's path.")
    msg: str
    type: str | None = None


class ValidationErrorResponse(BaseModel):
    """A request that does not match the schema (422, or 400 where a route documents it)."""

    detail: str = Field(examples=["username: is required; password: String should have at least 12 characters"])
    errors: list[FieldError] = Field(description="Each problem on its own, as FastAPI reports it.")


class MessageResponse(BaseModel):
    message: str
