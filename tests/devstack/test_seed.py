"""Seeding the tiny dev models into S3: a model built by today's code is not rebuilt; one built
by other code (its recorded build id differs) is rebuilt and replaces the old files."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from devstack.seed import MARKER, seed_tiny_models
from training.s3 import model_prefix
from training.catalog import load_catalog
from training.model_info import MODEL_INFO_FILE, tiny_build_id

pytestmark = pytest.mark.stack


@pytest.fixture
def own_bucket(s3):
    # a bucket of its own: the placeholder models below must not pass for real models elsewhere
    s3 = dataclasses.replace(s3, bucket=f"seed-test-{uuid.uuid4().hex[:8]}")
    s3.client().create_bucket(Bucket=s3.bucket)
    return s3


def _place(s3, model_id: str, build_id: str, *extra: str) -> None:
    prefix = model_prefix(model_id)
    for name in extra:
        s3.client().put_object(Bucket=s3.bucket, Key=prefix + name, Body=b"old")
    s3.client().put_object(Bucket=s3.bucket, Key=prefix + MODEL_INFO_FILE, Body=json.dumps({"build_id": build_id}))
    s3.client().put_object(Bucket=s3.bucket, Key=prefix + MARKER, Body=b"{}")


def _keys(s3, model_id: str) -> set[str]:
    prefix = model_prefix(model_id)
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def test_models_built_by_todays_code_are_not_rebuilt(own_bucket, tmp_path):
    tiny = [m.id for m in load_catalog().models if m.tiny]
    assert tiny, "the catalog has tiny models to seed"
    for model_id in tiny:
        _place(own_bucket, model_id, tiny_build_id())
    lines = seed_tiny_models(own_bucket, tmp_path / "seed.log")
    assert lines == [f"{m}: already in s3://{own_bucket.bucket}/{model_prefix(m)}" for m in tiny]
    assert not (tmp_path / "seed.log").exists()  # nothing was built


def test_a_model_built_by_older_code_is_rebuilt_and_replaced(own_bucket, tmp_path):
    stale, *current = [m for m in load_catalog().models if m.tiny]
    for model in current:
        _place(own_bucket, model.id, tiny_build_id())
    _place(own_bucket, stale.id, "0123456789abcdef", "model.safetensors", "left-over.bin")

    lines = seed_tiny_models(own_bucket, tmp_path / "seed.log")

    assert len(lines) == len(current) + 1
    assert [line for line in lines if "rebuilt" in line] == [
        f"{stale.id}: rebuilt (the code that builds it changed) and seeded "
        f"{len(_keys(own_bucket, stale.id))} files to s3://{own_bucket.bucket}/{model_prefix(stale.id)}"]
    keys = _keys(own_bucket, stale.id)
    assert "left-over.bin" not in keys and {"model.safetensors", MARKER, MODEL_INFO_FILE} <= keys
    body = own_bucket.client().get_object(Bucket=own_bucket.bucket,
                                          Key=model_prefix(stale.id) + MODEL_INFO_FILE)["Body"].read()
    assert json.loads(body)["build_id"] == tiny_build_id()
    again = seed_tiny_models(own_bucket, tmp_path / "again.log")  # now current: left alone
    assert all(": already in s3://" in line for line in again) and len(again) == len(current) + 1
