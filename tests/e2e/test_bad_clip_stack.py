"""A clip that passed validation but no longer decodes when the training reads it (its object in
S3 replaced after validation: a disk or copy fault), end to end on the real stack: the engine
trusts the validation report (no pass over the clips before the first step), meets the clip as
a batch needs it, reports it (a `warning` event naming it) and, past the allowed share of bad
clips (`QLORA_MAX_BAD_CLIP_FRACTION`, 1 %: none of 12), fails the job saying which clip and what
to do, without a retry."""

from __future__ import annotations

import time

import httpx
import pytest

from devstack.seed import seed_tiny_models
from tests.e2e.journey import TERMINAL, login, ready_dataset, start_job, watch
from training.s3 import dataset_files_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(600)]


def test_a_clip_that_stopped_decoding_is_reported_and_fails_the_job(api_server, tmp_path):
    lines = seed_tiny_models(api_server.s3, tmp_path / "seed.log")
    assert not any("failed" in line for line in lines), lines
    base = api_server.base_url.rstrip("/") + "/v1"
    with httpx.Client(base_url=base, timeout=60) as api:
        login(api)
        dataset_id = ready_dataset(api, tmp_path)
        s3, bucket = api_server.s3.client(), api_server.s3.bucket
        clips = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=dataset_files_prefix(dataset_id))
                       .get("Contents", []) if o["Key"].endswith(".mp4"))
        assert len(clips) == 12, clips
        broken = clips[0]
        s3.put_object(Bucket=bucket, Key=broken, Body=b"\x00not a video any more" * 64)
        name = broken.rsplit("/", 1)[1]

        job_id = start_job(api, dataset_id, "flamingo-tiny-classification", "bad-clip", epochs=1)
        started = time.monotonic()
        job, _ = watch(api, job_id, lambda j: j["status"] in TERMINAL, timeout_s=420)
        print(f"\njob with a clip broken after validation -> {job['status']} in {time.monotonic() - started:.1f} s: "
              f"{job['error']}")
        assert job["status"] == "failed", job
        assert "1 of 12 clips could not be decoded, more than the 1.0% allowed" in job["error"], job["error"]
        assert name in job["error"] and "validate the dataset again" in job["error"], job["error"]

        events = api.get(f"/trainings/{job_id}/events", params={"limit": 1000}).json()["data"]
        warnings = [e for e in events if e["type"] == "warning" and "could not be decoded" in e["message"]]
        assert len(warnings) == 1, events
        assert name in warnings[0]["message"] and warnings[0]["data"]["count"] == 1, warnings[0]
