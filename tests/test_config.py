from __future__ import annotations

from pathlib import Path

import pytest

from sagehost import contract
from sagehost.config import SOURCES, Settings, parse_columns, thread_limits
from sagehost.errors import ConfigError

# For every setting, values it must refuse; a setting missing here must be in FREE_TEXT.
BAD_VALUES: dict[str, tuple[str, ...]] = {
    "host": ("not_a_host", "-x.example"),
    "port": ("x", "0", "70000"),
    "workers": ("0", "abc", "-1", "1.5"),
    "timeout_s": ("0", "-1", "nan", "inf", "soon"),
    "max_payload_bytes": ("-1", "x", "1.5"),
    "default_accept": ("json", "text csv"),
    "default_method": ("fit",),
    "batch_mode": ("maybe",),
    "multi_model": ("maybe",),
    "model_memory_mb": ("0", "-5", "lots"),
    "batch_strategy": ("some",),
    "max_concurrent_transforms": ("0", "x"),
    "max_batch_rows": ("0", "x"),
    "max_batch_wait_ms": ("-1", "nan", "x"),
    "max_queue": ("0", "x"),
    "inline_below_us": ("-1", "x"),
    "preload": ("sometimes",),
    "fast_path": ("2",),
    "compiled_trees": ("numba",),
    "flavor": ("keras",),
    "log_level": ("LOUD", "25"),
    "max_header_bytes": ("0", "x", "-4"),
    "header_timeout_s": ("0", "x"),
    "body_timeout_s": ("0", "-3"),
    "min_body_rate": ("0", "x"),
    "keep_alive_timeout_s": ("0", "x"),
    "upstream": ("127.0.0.1:9090", "https://scorer/score", "http://", "http://h:99999/"),
    "upstream_health": ("health", "/he alth"),
    "adapter": ("soap",),
    "adapter_request": ("hooks", "hooks:", "my-hooks:f"),
    "adapter_response": (":f", "a b:f"),
    "upstream_columns": ("a:integer", ",", "a,a", ":int"),
    "upstream_max_body_bytes": ("0", "x"),
    "upstream_max_connection_age": ("-1", "x"),
    "yield_cpu": ("perhaps",),
    "safe_port_range": ("20000", "2-1", "0-10", "1-70000"),
}
# Any text is a valid value of these (a path, a name, a command); what it names is checked where
# it is used (the model loader, the proxy's start).
FREE_TEXT = {
    "base_dir",
    "model_dir",
    "target_name",
    "program",
    "code_dir",
    "scratch_dir",
    "channel",
    "upstream_cmd",
    "upstream_scratch",
}


def test_defaults_follow_sagemaker() -> None:
    settings = Settings.from_environ({})
    assert settings.model_dir == Path("/opt/ml/model")
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.max_payload_bytes == 6 * 1024 * 1024
    assert settings.timeout_s == 60
    assert settings.max_header_bytes == 64 * 1024
    assert (settings.header_timeout_s, settings.body_timeout_s, settings.keep_alive_timeout_s) == (60, 60, 75)
    assert settings.min_body_rate == 1024
    assert settings.upstream_body_limit == 6 * 1024 * 1024


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
    assert settings.upstream_body_limit == 100 * 1024 * 1024  # batch mode: MaxPayloadInMB's ceiling


def test_bind_to_port_beats_the_flag() -> None:
    settings = Settings.from_environ({"SAGEMAKER_BIND_TO_PORT": "9000"}, {"port": "7000"})
    assert settings.port == 9000
    assert Settings.from_environ({"SAGEHOST_PORT": "9001"}, {"port": "7000"}).port == 7000
    with pytest.raises(ConfigError, match="SAGEMAKER_BIND_TO_PORT='http'"):
        Settings.from_environ({"SAGEMAKER_BIND_TO_PORT": "http"})


def test_our_twin_beats_the_sagemaker_name_and_flag_beats_both() -> None:
    env = {"SAGEHOST_WORKERS": "2", "SAGEMAKER_MODEL_SERVER_WORKERS": "4"}
    assert Settings.from_environ(env).workers == 2
    assert Settings.from_environ(env, {"workers": "5"}).workers == 5
    assert Settings.from_environ({"SAGEHOST_WORKERS": "abc"}, {"workers": "5"}).workers == 5


def test_a_commands_own_default_beats_the_sagemaker_names_only() -> None:
    proxy = {"workers": 1}  # `sagehost proxy`: SageMaker's worker count configures the upstream
    assert Settings.from_environ({"SAGEMAKER_MODEL_SERVER_WORKERS": "4"}, defaults=proxy).workers == 1
    assert Settings.from_environ({"SAGEHOST_WORKERS": "3"}, defaults=proxy).workers == 3
    assert Settings.from_environ({"SAGEHOST_WORKERS": "3"}, {"workers": "2"}, proxy).workers == 2
    with pytest.raises(ConfigError, match="SAGEHOST_WORKERS='0'"):
        Settings.from_environ({"SAGEHOST_WORKERS": "0"}, defaults=proxy)


@pytest.mark.parametrize("text", ["0", "1", "5", "6", "250"])
def test_max_payload_means_the_same_from_the_flag_and_both_variables(text: str) -> None:
    # N >= 1 is N MiB exactly as given; 0 is no limit (Batch Transform's MaxPayloadInMB=0).
    expected = contract.NO_PAYLOAD_LIMIT if text == "0" else int(text) * contract.MIB
    readings = [
        Settings.from_environ({}, {"max_payload_bytes": text}),
        Settings.from_environ({"SAGEHOST_MAX_PAYLOAD_IN_MB": text}),
        Settings.from_environ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": text}),
    ]
    assert {s.max_payload_bytes for s in readings} == {expected}
    assert {s.max_payload_mb for s in readings} == {int(text)}


def test_http_limits_and_the_upstream_cap_are_read_in_their_units() -> None:
    settings = Settings.from_environ(
        {
            "SAGEHOST_MAX_HEADER_KB": "8",
            "SAGEHOST_HEADER_TIMEOUT": "2.5",
            "SAGEHOST_BODY_TIMEOUT": "3",
            "SAGEHOST_MIN_BODY_RATE_KB": "16",
            "SAGEHOST_KEEP_ALIVE_TIMEOUT": "5",
            "SAGEHOST_UPSTREAM_MAX_BODY_MB": "2",
        }
    )
    assert settings.max_header_bytes == 8 * 1024
    assert (settings.header_timeout_s, settings.body_timeout_s, settings.keep_alive_timeout_s) == (2.5, 3, 5)
    assert settings.min_body_rate == 16 * 1024
    assert settings.upstream_body_limit == 2 * contract.MIB


def test_upstream_columns_are_typed_or_left_to_guess() -> None:
    raw = " age:int , zip:STR,notes, flag:bool,"
    expected = (("age", "int"), ("zip", "str"), ("notes", None), ("flag", "bool"))
    assert Settings.from_environ({"SAGEHOST_UPSTREAM_COLUMNS": raw}).upstream_columns == expected
    assert Settings.from_environ({}, {"upstream_columns": raw}).upstream_columns == expected
    assert parse_columns("metadata", raw) == expected
    with pytest.raises(ConfigError, match="metadata='a:date'"):
        parse_columns("metadata", "a:date")


def test_every_setting_is_listed_as_checked_or_free_text() -> None:
    fields = {source.field for source in SOURCES}
    assert not BAD_VALUES.keys() & FREE_TEXT
    assert BAD_VALUES.keys() | FREE_TEXT == fields


@pytest.mark.parametrize(("field", "bad"), [(field, bad) for field, values in BAD_VALUES.items() for bad in values])
def test_a_flag_and_its_twins_refuse_a_bad_value_with_the_same_reason(field: str, bad: str) -> None:
    source = next(s for s in SOURCES if s.field == field)
    reasons = set()
    for name in source.env:
        with pytest.raises(ConfigError) as refused:
            Settings.from_environ({name: bad})
        message = str(refused.value)
        assert message.startswith(f"{name}={bad!r}: ")
        reasons.add(message.split(": ", 1)[1])
    if source.flag is not None:
        with pytest.raises(ConfigError) as refused:
            Settings.from_environ({}, {field: bad})
        flag = source.flag.split("/")[0]
        assert str(refused.value).startswith(f"{flag} {bad!r}: ")
        reasons.add(str(refused.value).split(": ", 1)[1])
    assert len(reasons) == 1
    assert reasons.pop().endswith(".")


def test_free_text_settings_take_what_they_are_given() -> None:
    env = {"SAGEHOST_TARGET_NAME": "fraud", "SAGEHOST_UPSTREAM_CMD": "java -jar scorer.jar --port 9090"}
    settings = Settings.from_environ(env, {"model_dir": "./m", "channel": "model"})
    assert (settings.target_name, settings.upstream_cmd) == ("fraud", "java -jar scorer.jar --port 9090")
    assert (settings.model_dir, settings.channel) == (Path("m"), "model")


def test_thread_limits_split_cores_and_respect_user() -> None:
    limits = thread_limits(Settings(workers=64), {"OMP_NUM_THREADS": "8"})
    assert "OMP_NUM_THREADS" not in limits
    assert limits["OPENBLAS_NUM_THREADS"] == "1"
