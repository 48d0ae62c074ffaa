"""The pipeline's settings (`training.settings`): read from the environment at each call,
empty variables count as unset, a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.settings import SettingsError, get_settings

VARIABLES = ("QLORA_S3_BUCKET", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "QLORA_CACHE_DIR", "QLORA_CACHE_MAX_GB",
             "MLFLOW_TRACKING_URI", "QLORA_MLFLOW_UI_URL", "QLORA_JOB_ID", "QLORA_FRAME_STORE_MAX_GB",
             "QLORA_MAX_BAD_CLIP_FRACTION")


@pytest.fixture
def env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(env):
    settings = get_settings()
    assert settings.s3_bucket == "qlora" and settings.s3_endpoint_url is None
    assert settings.cache_dir == Path.home() / ".cache" / "qlora"
    assert settings.cache_max_bytes == 200 * 1024**3
    assert settings.mlflow_tracking_uri is None and settings.mlflow_ui_base_url is None
    assert settings.job_id is None


def test_each_call_sees_the_environment_as_it_is_now(env, tmp_path):
    env.setenv("QLORA_S3_BUCKET", "other")
    env.setenv("QLORA_CACHE_DIR", str(tmp_path))
    env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    env.setenv("QLORA_CACHE_MAX_GB", "0")
    settings = get_settings()
    assert (settings.s3_bucket, settings.cache_dir) == ("other", tmp_path)
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.cache_max_bytes is None  # 0: no limit
    env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9100")  # the S3-specific one wins
    env.setenv("QLORA_CACHE_MAX_GB", "1.5")
    assert get_settings().s3_endpoint_url == "http://127.0.0.1:9100"
    assert get_settings().cache_max_bytes == int(1.5 * 1024**3)


def test_empty_variables_count_as_unset(env):
    defaults = get_settings()
    for name in VARIABLES:
        env.setenv(name, "")
    assert get_settings() == defaults


def test_the_mlflow_ui_is_the_ui_url_else_an_http_tracking_uri(env):
    env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/")
    assert get_settings().mlflow_ui_base_url == "http://127.0.0.1:5000"
    env.setenv("QLORA_MLFLOW_UI_URL", "https://mlflow.example.com")
    assert get_settings().mlflow_ui_base_url == "https://mlflow.example.com"
    env.delenv("QLORA_MLFLOW_UI_URL")
    env.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")  # no UI to link to
    assert get_settings().mlflow_ui_base_url is None


def test_a_bad_value_names_its_variable(env):
    env.setenv("QLORA_CACHE_MAX_GB", "lots")
    with pytest.raises(SettingsError, match="QLORA_CACHE_MAX_GB='lots'"):
        get_settings()
    assert issubclass(SettingsError, ValueError)


def test_frame_store_and_bad_clip_settings(env):
    settings = get_settings()
    assert settings.frame_store_max_bytes == 20 * 1024**3 and settings.max_bad_clip_fraction == 0.01
    env.setenv("QLORA_FRAME_STORE_MAX_GB", "0")
    env.setenv("QLORA_MAX_BAD_CLIP_FRACTION", "0.05")
    assert (get_settings().frame_store_max_bytes, get_settings().max_bad_clip_fraction) == (0, 0.05)
    env.setenv("QLORA_MAX_BAD_CLIP_FRACTION", "5")  # a share, not a percentage
    with pytest.raises(SettingsError, match="QLORA_MAX_BAD_CLIP_FRACTION='5'"):
        get_settings()
