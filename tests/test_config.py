from __future__ import annotations

from pathlib import Path

import pytest

from sagehost.config import Settings, thread_limits
from sagehost.errors import ConfigError


def test_defaults_follow_sagemaker() -> None:
    settings = Settings.from_environ({})
    assert settings.model_dir == Path("/opt/ml/model")
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.max_payload_bytes == 6 * 1024 * 1024
    assert settings.timeout_s == 60


def test_sagemaker_names_are_honoured() -> None:
    settings = Settings.from_environ(
        {
            "SAGEMAKER_BASE_DIR": "/tmp/ml",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
            "MODEL_SERVER_TIMEOUT": "5",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
            "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv",
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_BATCH_STRATEGY": "SingleRecord",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "10",
        }
    )
    assert settings.model_dir == Path("/tmp/ml/model")
    assert settings.workers == 3
    assert settings.timeout_s == 5
    assert settings.max_payload_mb == 20
    assert settings.default_accept == "text/csv"
    assert settings.batch_mode
    assert settings.batch_strategy == "SINGLE_RECORD"
    assert settings.log_level == "DEBUG"


def test_bind_to_port_beats_the_flag() -> None:
    settings = Settings.from_environ({"SAGEMAKER_BIND_TO_PORT": "9000"}, {"port": 7000})
    assert settings.port == 9000
    assert Settings.from_environ({"SAGEHOST_PORT": "9001"}, {"port": 7000}).port == 7000


def test_our_twin_beats_the_sagemaker_name_and_flag_beats_both() -> None:
    env = {"SAGEHOST_WORKERS": "2", "SAGEMAKER_MODEL_SERVER_WORKERS": "4"}
    assert Settings.from_environ(env).workers == 2
    assert Settings.from_environ(env, {"workers": 5}).workers == 5


def test_payload_limit_never_below_invoke_endpoint_limit() -> None:
    assert Settings.from_environ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"}).max_payload_mb == 6


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAGEHOST_WORKERS", "0"),
        ("SAGEHOST_PORT", "x"),
        ("SAGEMAKER_BATCH", "maybe"),
        ("SAGEHOST_DEFAULT_METHOD", "fit"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_environ({name: value})


def test_thread_limits_split_cores_and_respect_user() -> None:
    limits = thread_limits(Settings(workers=64), {"OMP_NUM_THREADS": "8"})
    assert "OMP_NUM_THREADS" not in limits
    assert limits["OPENBLAS_NUM_THREADS"] == "1"
