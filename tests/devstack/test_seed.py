"""Seeding the tiny dev models into S3 happens once: a model already there is not rebuilt."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from devstack.seed import MARKER, seed_tiny_models
from training import storage
from training.catalog import load_catalog

pytestmark = pytest.mark.stack


def test_models_already_in_s3_are_not_rebuilt(s3, tmp_path):
    # a bucket of its own: the placeholder markers below must not pass for real models elsewhere
    s3 = dataclasses.replace(s3, bucket=f"seed-test-{uuid.uuid4().hex[:8]}")
    client = s3.client()
    client.create_bucket(Bucket=s3.bucket)
    tiny = [m.id for m in load_catalog().models if m.tiny]
    assert tiny, "the catalog has tiny models to seed"
    for model_id in tiny:
        client.put_object(Bucket=s3.bucket, Key=storage.model_prefix(model_id) + MARKER, Body=b"{}")
    lines = seed_tiny_models(s3, tmp_path / "seed.log")
    assert lines == [f"{m}: already in s3://{s3.bucket}/{storage.model_prefix(m)}" for m in tiny]
    assert not (tmp_path / "seed.log").exists()  # nothing was built
