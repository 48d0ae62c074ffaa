"""Seeding the tiny dev models into S3 happens once: a model already there is not rebuilt."""

from __future__ import annotations

import pytest

from devstack.seed import MARKER, seed_tiny_models
from training import storage
from training.catalog import load_catalog

pytestmark = pytest.mark.stack


def test_models_already_in_s3_are_not_rebuilt(s3, tmp_path):
    tiny = [m.id for m in load_catalog().models if m.tiny]
    assert tiny, "the catalog has tiny models to seed"
    client = s3.client()
    for model_id in tiny:
        client.put_object(Bucket=s3.bucket, Key=storage.model_prefix(model_id) + MARKER, Body=b"{}")
    lines = seed_tiny_models(s3, tmp_path / "seed.log")
    assert lines == [f"{m}: already in s3://{s3.bucket}/{storage.model_prefix(m)}" for m in tiny]
    assert not (tmp_path / "seed.log").exists()  # nothing was built
