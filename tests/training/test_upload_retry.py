"""The finished adapter's upload waits out an S3 outage (within `QLORA_ADAPTER_UPLOAD_RETRY_S`),
then fails naming where it went and why; a refusal (403, no bucket) fails at once. The real
outage (SeaweedFS killed while the engine uploads) is tests/e2e/test_service_faults.py."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from training import s3


def _flaky(monkeypatch, errors: list[Exception]) -> list[int]:
    calls = []

    def upload_folder(folder, uri):
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return 3

    monkeypatch.setattr(s3, "upload_folder", upload_folder)
    return calls


def test_an_outage_is_waited_out(monkeypatch, tmp_path):
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k")
    calls = _flaky(monkeypatch, [down, down])
    assert s3.upload_folder_retrying(tmp_path, "s3://b/adapter/", within_s=5, pause_s=0.01) == 3
    assert len(calls) == 3


def test_a_longer_outage_fails_naming_the_destination(monkeypatch, tmp_path):
    _flaky(monkeypatch, [EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k")] * 100)
    with pytest.raises(s3.S3UploadFailed, match=r"could not upload to s3://b/adapter/ .*tried for .*"
                                                 r"EndpointConnectionError"):
        s3.upload_folder_retrying(tmp_path, "s3://b/adapter/", within_s=0.05, pause_s=0.01)


def test_a_refusal_fails_at_once(monkeypatch, tmp_path):
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"},
                          "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    calls = _flaky(monkeypatch, [denied, denied])
    with pytest.raises(s3.S3UploadFailed, match="AccessDenied"):
        s3.upload_folder_retrying(tmp_path, "s3://b/adapter/", within_s=60, pause_s=0.01)
    assert len(calls) == 1
