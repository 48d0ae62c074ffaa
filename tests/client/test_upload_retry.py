"""Completing an upload is retried while the API answers a transient error (the validation run
may exist already: the API's completion is idempotent), never after a refusal."""

from __future__ import annotations

import pytest

from qlora_client.client import ApiError
from qlora_client.upload import completing


def test_a_503_is_retried_until_the_completion_goes_through() -> None:
    answers = [ApiError("The pipeline service (Airflow) is unavailable; retry later", 503), None,
               {"message": "Dataset processing initiated"}]
    calls = []

    def complete():
        calls.append(1)
        answer = answers.pop(0)
        if isinstance(answer, ApiError):
            raise answer
        if answer is None:
            raise ApiError("cannot reach the API", None)
        return answer

    assert completing(complete, delays=(0, 0, 0)) == {"message": "Dataset processing initiated"}
    assert len(calls) == 3


def test_a_refusal_is_not_retried_and_the_last_transient_error_is_raised() -> None:
    calls = []

    def refused():
        calls.append(1)
        raise ApiError("No object at s3_key: PUT the archive to upload_url before completing the upload", 400)

    with pytest.raises(ApiError, match="No object at s3_key"):
        completing(refused, delays=(0, 0))
    assert len(calls) == 1

    def down():
        calls.append(1)
        raise ApiError("Storage (S3) is unavailable; retry later", 503)

    with pytest.raises(ApiError, match="Storage"):
        completing(down, delays=(0, 0))
    assert len(calls) == 1 + 3
