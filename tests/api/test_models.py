"""The model catalog endpoints, seeded from training/catalog.toml."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.models import CatalogModelRow
from api.services.catalog import seed_catalog
from training.catalog import load_catalog


def test_allowed_models_match_the_catalog(client: TestClient, auth, settings) -> None:
    resp = client.get("/v1/models/allowed", headers=auth)
    assert resp.status_code == 200
    models = {m["id"]: m for m in resp.json()}
    catalog = load_catalog()
    assert set(models) == {m.id for m in catalog.models}
    for entry in catalog.models:
        got = models[entry.id]
        assert got["name"] == entry.name
        assert got["model_type"] == entry.model_type
        assert got["base_architecture"] == entry.base_architecture
        assert got["version"] == entry.version
        assert got["tiny"] == entry.tiny
        assert got["supported_lora_params"] == {"min_rank": entry.min_rank, "max_rank": entry.max_rank,
                                                "default_alpha": entry.default_alpha}
    types = {(m["base_architecture"], m["model_type"]) for m in models.values()}
    assert types == {(a, t) for a in ("flamingo", "video_llama") for t in ("video_classification", "video_captioning")}


def test_model_detail(client: TestClient, auth, settings) -> None:
    resp = client.get("/v1/models/flamingo-tiny-captioning", headers=auth)
    assert resp.status_code == 200
    body = resp.json()
    assert body["architecture_class"] == "IdeficsForVisionText2Text"
    assert body["weights_uri"] == f"s3://{settings.s3_bucket}/models/flamingo-tiny-captioning/"
    assert body["tiny"] is True and body["checkpoint"] is None
    # every linear layer of the language model, as the QLoRA paper recommends
    assert body["default_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"]
    assert body["allowed_target_modules"] == body["default_target_modules"]
    real = client.get("/v1/models/idefics-9b-captioning", headers=auth).json()
    assert real["checkpoint"] == "HuggingFaceM4/idefics-9b-instruct"
    assert real["tiny"] is False


def test_unknown_model_is_404_and_auth_required(client: TestClient, auth) -> None:
    resp = client.get("/v1/models/no-such-model", headers=auth)
    assert resp.status_code == 404
    assert "no-such-model" in resp.json()["detail"]
    assert client.get("/v1/models/allowed").status_code == 401


def test_seeding_is_idempotent(client: TestClient) -> None:
    with client.app.state.sessionmaker() as session:
        seed_catalog(session)
        seed_catalog(session)
        assert session.scalar(select(func.count()).select_from(CatalogModelRow)) == len(load_catalog().models)
