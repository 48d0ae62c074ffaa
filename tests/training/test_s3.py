"""Folder transfers of `training.s3` against the real S3 server: the local cache keeps what is
unchanged and fetches again what was re-uploaded, even at the same size."""

from __future__ import annotations

import time
import uuid

import pytest

from training import s3

pytestmark = pytest.mark.stack


def test_the_cache_refetches_an_object_reuploaded_with_the_same_size(tmp_path, s3_env):
    client, bucket, prefix = s3_env.client(), s3_env.bucket, f"cache-test-{uuid.uuid4().hex[:8]}/"
    client.put_object(Bucket=bucket, Key=prefix + "weights.bin", Body=b"old weights")
    client.put_object(Bucket=bucket, Key=prefix + "sub/config.json", Body=b"{}")
    dest = tmp_path / "cache"

    assert s3.download_prefix(client, bucket, prefix, dest) == (2, 2)
    assert s3.download_prefix(client, bucket, prefix, dest) == (2, 0)  # unchanged: kept

    time.sleep(1.1)  # S3 times have one-second resolution
    client.put_object(Bucket=bucket, Key=prefix + "weights.bin", Body=b"new weights")
    assert s3.download_prefix(client, bucket, prefix, dest) == (2, 1)
    assert (dest / "weights.bin").read_bytes() == b"new weights"
    assert (dest / "sub" / "config.json").read_bytes() == b"{}"
    assert not list(dest.rglob("*.part"))
