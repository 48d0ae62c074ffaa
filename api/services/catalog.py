"""Seeds the model catalog (`training/catalog.toml`) into the `base_models` table, idempotently."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import CatalogModelRow
from training.catalog import Catalog, load_catalog


def seed_catalog(session: Session, catalog: Catalog | None = None) -> int:
    """Inserts or updates every catalog entry; entries gone from the catalog become inactive."""
    catalog = catalog or load_catalog()
    existing = {row.id: row for row in session.scalars(select(CatalogModelRow))}
    for entry in catalog.models:
        row = existing.pop(entry.id, None) or CatalogModelRow(id=entry.id)
        row.name = entry.name
        row.description = entry.description
        row.model_type = entry.model_type
        row.base_architecture = entry.base_architecture
        row.architecture_class = entry.architecture_class
        row.version = entry.version
        row.checkpoint = entry.checkpoint
        row.tiny = entry.tiny
        row.min_rank = entry.min_rank
        row.max_rank = entry.max_rank
        row.default_alpha = entry.default_alpha
        row.default_target_modules = list(entry.default_target_modules)
        row.allowed_target_modules = list(entry.allowed_target_modules)
        row.catalog_version = catalog.version
        row.active = True
        session.add(row)
    for stale in existing.values():
        stale.active = False
    session.commit()
    return len(catalog.models)
