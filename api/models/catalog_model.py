from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, utcnow


class CatalogModelRow(Base):
    """One row of the model catalog (table `base_models`): a base model users may fine-tune, seeded
    from its `training.catalog.CatalogModel` entry of `training/catalog.toml`. (Not pydantic's
    `BaseModel`; the table keeps its name.)"""

    __tablename__ = "base_models"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text)
    model_type: Mapped[str] = mapped_column(String(32))
    base_architecture: Mapped[str] = mapped_column(String(32))
    architecture_class: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    checkpoint: Mapped[str | None] = mapped_column(String(255), default=None)
    tiny: Mapped[bool] = mapped_column(default=False)
    min_rank: Mapped[int]
    max_rank: Mapped[int]
    default_alpha: Mapped[int]
    default_target_modules: Mapped[list[str]] = mapped_column(JSON)
    allowed_target_modules: Mapped[list[str]] = mapped_column(JSON)
    catalog_version: Mapped[str] = mapped_column(String(32))
    #: false for entries no longer in the catalog (kept for the trainings that used them)
    active: Mapped[bool] = mapped_column(default=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
