"""The local S3 server behaves like S3 where it matters: presigned URLs work and it refuses
what is not signed, expired or tampered with."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.stack


def _presigned_put(s3, key: str, expires: int = 60) -> str:
    return s3.client().generate_presigned_url("put_object", Params={"Bucket": s3.bucket, "Key": key},
                                              ExpiresIn=expires)


def test_presigned_put_with_httpx_stores_the_bytes(s3):
    key = "datasets/d1/clips.zip"
    response = httpx.put(_presigned_put(s3, key), content=b"zip bytes")
    assert response.status_code == 200
    assert s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read() == b"zip bytes"


def test_expired_presigned_url_is_refused(s3):
    url = _presigned_put(s3, "datasets/d2/late.zip", expires=1)
    time.sleep(2.5)
    response = httpx.put(url, content=b"late")
    assert response.status_code == 403
    assert "expired" in response.text.lower()


def test_tampered_signature_is_refused(s3):
    url = _presigned_put(s3, "datasets/d3/x.zip")
    signature = httpx.URL(url).params["X-Amz-Signature"]
    forged = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    assert httpx.put(forged, content=b"x").status_code == 403


def test_url_signed_for_another_key_is_refused(s3):
    url = _presigned_put(s3, "datasets/d4/a.zip").replace("/d4/a.zip", "/d4/b.zip")
    assert httpx.put(url, content=b"x").status_code == 403


def test_anonymous_write_is_refused(s3):
    assert httpx.put(f"{s3.endpoint_url}/{s3.bucket}/anon.txt", content=b"x").status_code == 403


def test_s3_env_points_boto3_at_the_server(s3_env):
    import boto3

    boto3.client("s3").put_object(Bucket=s3_env.bucket, Key="env/probe.txt", Body=b"ok")
    assert s3_env.client().head_object(Bucket=s3_env.bucket, Key="env/probe.txt")["ContentLength"] == 2
