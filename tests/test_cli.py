"""The CLI reads settings through config.py only: a flag and its environment twin mean the same
and fail alike, with a usage error (exit 2) and never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

from sagehost import cli, contract
from sagehost.config import BY_FLAG, SOURCES, Settings
from tests.conftest import SAGEHOST, running
from tests.test_config import BAD_VALUES

UPSTREAM = "http://127.0.0.1:9/score"  # never contacted: every case here stops before
HTTP_FLAGS = ("--max-header-kb", "--header-timeout", "--body-timeout", "--min-body-rate-kb", "--keep-alive-timeout")


def settings_of(command: click.Command, args: Sequence[str], env: Mapping[str, str]) -> Settings:
    """What `sagehost <command> <args>` would run with, parsed by click itself, with `env` as the
    environment; the server is not started."""
    with command.make_context(command.name, list(args), obj=env) as context:
        read = cli.serve_settings if command is cli.serve else cli.proxy_settings
        return read(context.params)


def refused(args: list[str], env: Mapping[str, str]) -> str:
    """Run the command in process; assert it stopped as a usage error; its output."""
    result = CliRunner().invoke(cli.main, args, obj={**GUARD[args[0]], **env})
    assert isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


# Should a bad value ever be let through, the command then stops at once instead of serving:
# `serve` finds no model, `proxy` finds its upstream on the contract's own port.
GUARD = {
    "serve": {"SAGEHOST_MODEL_DIR": "/nonexistent/sagehost-test", "SAGEHOST_HOST": "127.0.0.1"},
    "proxy": {"SAGEHOST_UPSTREAM": "http://127.0.0.1:8080/score", "SAGEHOST_HOST": "127.0.0.1"},
}


def _flag_cases() -> list[tuple[str, str, str]]:
    cases = []
    for command in (cli.serve, cli.proxy):
        flags = {option.opts[0] for option in command.params if isinstance(option, click.Option)}
        for source in SOURCES:
            if source.flag is not None and "/" not in source.flag and source.flag in flags:
                cases += [(str(command.name), source.flag, bad) for bad in BAD_VALUES.get(source.field, ())]
    return cases


def _variable_cases() -> list[tuple[str, str, str]]:
    cases = []
    for command in ("serve", "proxy"):
        for source in SOURCES:
            for name in source.env:
                if command == "proxy" and source.field in cli.PROXY_DEFAULTS and not name.startswith("SAGEHOST_"):
                    continue  # not read by the proxy: see test_proxy_runs_one_worker_…
                cases += [(command, name, bad) for bad in BAD_VALUES.get(source.field, ())[:1]]
    return cases


@pytest.mark.parametrize(("command", "flag", "bad"), _flag_cases())
def test_every_bad_flag_is_a_usage_error_naming_it(command: str, flag: str, bad: str) -> None:
    output = refused([command, flag, bad], {})
    assert f"Error: {flag} {bad!r}: " in output


@pytest.mark.parametrize(("command", "name", "bad"), _variable_cases())
def test_every_bad_variable_is_a_usage_error_naming_it(command: str, name: str, bad: str) -> None:
    output = refused([command], {name: bad})
    assert f"Error: {name}={bad!r}: " in output


def test_a_port_in_use_is_one_clear_line_not_a_traceback(iris_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SAGEHOST_", "SM_"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [SAGEHOST, "serve", "--model-dir", str(iris_dir), "--host", "127.0.0.1", "--port", str(port)],
            check=False,
            env={**env, "SAGEHOST_SCRATCH_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{port} (Address already in use)" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("workers", ["0", "abc"])
def test_proxy_with_a_bad_worker_count_says_so_and_exits_2(workers: str, tmp_path: Path) -> None:
    # Reported: SAGEHOST_WORKERS=0 started no workers and exited 0 silently; =abc printed a traceback.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SAGEHOST_", "SM_"))}
    env |= {"SAGEHOST_WORKERS": workers, "SAGEHOST_SCRATCH_DIR": str(tmp_path)}
    done = subprocess.run(
        [SAGEHOST, "proxy", "--upstream", GUARD["proxy"]["SAGEHOST_UPSTREAM"], "--host", "127.0.0.1"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"SAGEHOST_WORKERS={workers!r}: " in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("mb", ["0", "1", "6", "7"])
@pytest.mark.parametrize("command", [cli.serve, cli.proxy])
def test_max_payload_flag_and_variable_mean_the_same(command: click.Command, mb: str) -> None:
    expected = contract.NO_PAYLOAD_LIMIT if mb == "0" else int(mb) * contract.MIB
    base = {"SAGEHOST_UPSTREAM": UPSTREAM}
    by_flag = settings_of(command, ["--max-payload-mb", mb], base)
    by_env = settings_of(command, [], {**base, "SAGEMAKER_MAX_PAYLOAD_IN_MB": mb})
    assert by_flag.max_payload_bytes == by_env.max_payload_bytes == expected


@pytest.mark.parametrize("command", [cli.serve, cli.proxy])
def test_http_limits_are_flags_of_serve_and_proxy(command: click.Command) -> None:
    args = ["--max-header-kb", "8", "--header-timeout", "2", "--body-timeout", "3"]
    args += ["--min-body-rate-kb", "4", "--keep-alive-timeout", "5"]
    settings = settings_of(command, args, {"SAGEHOST_UPSTREAM": UPSTREAM})
    assert settings.max_header_bytes == 8 * 1024
    assert (settings.header_timeout_s, settings.body_timeout_s, settings.keep_alive_timeout_s) == (2, 3, 5)
    assert settings.min_body_rate == 4 * 1024


def test_proxy_flags_read_the_upstream_cap_and_typed_columns() -> None:
    args = ["--upstream", UPSTREAM, "--upstream-max-body-mb", "3", "--upstream-columns", "age:int,zip:str,city"]
    settings = settings_of(cli.proxy, args, {})
    assert settings.upstream_max_body_bytes == 3 * contract.MIB
    assert settings.upstream_columns == (("age", "int"), ("zip", "str"), ("city", None))
    assert settings_of(cli.proxy, ["--upstream", UPSTREAM, "--no-yield-cpu"], {}).yield_cpu is False


@pytest.mark.parametrize("command", [cli.serve, cli.proxy])
def test_proxy_runs_one_worker_unless_our_own_twin_or_the_flag_says(command: click.Command) -> None:
    # SageMaker's worker count is for a model server: beside a proxy, that is the upstream's.
    env = {"SAGEHOST_UPSTREAM": UPSTREAM, "SAGEMAKER_MODEL_SERVER_WORKERS": "4"}
    assert settings_of(command, [], env).workers == 1
    assert settings_of(command, [], {**env, "SAGEHOST_WORKERS": "3"}).workers == 3
    assert settings_of(command, ["--workers", "2"], {**env, "SAGEHOST_WORKERS": "3"}).workers == 2
    assert settings_of(command, [], {**env, "MODEL_SERVER_WORKERS": "abc"}).workers == 1  # not read
    assert settings_of(cli.serve, [], {"SAGEMAKER_MODEL_SERVER_WORKERS": "4"}).workers == 4  # no upstream


def test_every_declared_flag_is_offered_and_every_setting_option_is_declared() -> None:
    offered: set[str] = set()
    for command in (cli.serve, cli.proxy, cli.train, cli.package, cli.build):
        for option in command.params:
            if isinstance(option, click.Option) and option.name in {s.field for s in SOURCES}:
                spelled = "/".join(option.opts + option.secondary_opts)
                assert spelled == BY_FLAG[spelled].flag
                offered.add(spelled)
    assert offered == set(BY_FLAG)
    for command in (cli.serve, cli.proxy):
        assert {o.opts[0] for o in command.params}.issuperset(HTTP_FLAGS)


def test_help_shows_each_flags_twin_and_the_commands_own_default() -> None:
    proxy_help = CliRunner().invoke(cli.main, ["proxy", "--help"], obj={}).output
    assert "[SAGEHOST_WORKERS; 1]" in proxy_help
    assert "[SAGEHOST_UPSTREAM_MAX_BODY_MB;" in proxy_help
    serve_help = CliRunner().invoke(cli.main, ["serve", "--help"], obj={}).output
    assert "SAGEMAKER_MODEL_SERVER_WORKERS" in serve_help
    assert "[SAGEHOST_KEEP_ALIVE_TIMEOUT; 75]" in " ".join(serve_help.split())


def test_a_one_mib_limit_from_sagemakers_variable_is_kept(iris_dir: Path, tmp_path: Path) -> None:
    # Reported: SAGEMAKER_MAX_PAYLOAD_IN_MB below 6 was raised to 6 while --max-payload-mb took it as given.
    row = b"5.1,3.5,1.4,0.2\n"
    with running(iris_dir, tmp_path, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"}) as server:
        small = server.client.post("/invocations", content=row * 1000, headers={"Content-Type": "text/csv"})
        assert small.status_code == 200
        try:
            big = server.client.post("/invocations", content=row * 100_000, headers={"Content-Type": "text/csv"})
        except httpx.TransportError as exc:  # a server may close once it has answered
            pytest.fail(f"no answer to a body over the limit: {exc}")
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "payload_too_large"
