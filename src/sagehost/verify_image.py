"""`sagehost verify IMAGE`: run the image as SageMaker would and check what only an image can get
wrong — labels, entry point, architecture, starting from a read-only root, a /ping that says 200
before the model works, and SIGTERM — then the same contract checks as `sagehost verify URL`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sagehost import contract
from sagehost.errors import UpstreamTimeout, UpstreamUnavailable
from sagehost.image.engine import Engine, find_engine
from sagehost.local.launch import HealthCheckFailed, Launched, free_port, launch_container, wait_healthy
from sagehost.local.modes import STARTUP_DEADLINE_S, sagemaker_run
from sagehost.local.run import model_folder
from sagehost.verify import Check, call, verify_url

_SHELL_FORM = (["/bin/sh", "-c"], ["sh", "-c"], ["/bin/bash", "-c"])


def verify_image(
    image: str,
    payloads: list[tuple[Path, str]],
    model_data: Path | None = None,
    builder: str | None = None,
    startup_timeout_s: float = STARTUP_DEADLINE_S,
) -> list[Check]:
    engine = find_engine(builder)
    config = engine.inspect_image(image)
    labels: dict[str, str] = (config.get("Config") or {}).get("Labels") or {}
    checks = [_bind_label(labels), _entrypoint(config), _architecture(config)]
    with model_folder(model_data, lambda line: print(line, file=sys.stderr)) as model_dir:
        checks += _run_checks(engine, image, model_dir, payloads, labels=labels, startup_timeout_s=startup_timeout_s)
    return checks


def _run_checks(
    engine: Engine,
    image: str,
    model_dir: Path | None,
    payloads: list[tuple[Path, str]],
    *,
    labels: dict[str, str],
    startup_timeout_s: float,
) -> list[Check]:
    # With the bind-to-port label, run it as a pipeline would: on SAGEMAKER_BIND_TO_PORT, not 8080.
    pipeline = labels.get(contract.LABEL_BIND_TO_PORT) == "true"
    run = sagemaker_run("pipeline" if pipeline else "realtime")
    launched = launch_container(engine, image, run, model_dir, free_port())
    checks: list[Check] = []
    try:
        started, answering = _starts(launched, run.env, startup_timeout_s, payloads)
        checks.append(started)
        if answering:
            checks += verify_url(launched.url, payloads)
    finally:
        seconds, code = launched.stop()
    checks.append(_read_only(launched))
    checks.append(_sigterm(seconds, code))
    return checks


def _starts(
    launched: Launched, env: dict[str, str], deadline_s: float, payloads: list[tuple[Path, str]]
) -> tuple[Check, bool]:
    """The check, and whether /ping answers 200 (so the contract checks can run)."""
    where = f"on SAGEMAKER_BIND_TO_PORT={env['SAGEMAKER_BIND_TO_PORT']}" if env else "on 8080"
    name = f"Starts with a read-only root and model, and /ping turns 200 {where}"
    try:
        seconds = wait_healthy(launched, deadline_s)
    except HealthCheckFailed as exc:
        fix = (
            "The log lines above say why. A pipeline image with the accept-bind-to-port label must listen on "
            "SAGEMAKER_BIND_TO_PORT."
            if env
            else "The log lines above say why."
        )
        return Check(name, False, f"{exc}\n{launched.log_tail()}", fix), False
    if payloads and (got := _first_invocation(launched.url, payloads[0])):
        # /ping's first 200 promises that the model answers: hold it to that at once.
        early = Check(
            name,
            False,
            f"/ping said 200 but the first invocation got {got}",
            "Answer /ping with 503 until the model is loaded and has answered one warm-up call: SageMaker "
            "sends traffic as soon as /ping says 200.",
        )
        return early, True
    return Check(name, True, f"200 after {seconds:.1f} s"), True


def _first_invocation(url: str, payload: tuple[Path, str]) -> str | None:
    """What went wrong with the first invocation, or None when it got a 2xx."""
    path, content_type = payload
    try:
        answer = call("POST", url + "/invocations", path.read_bytes(), {"Content-Type": content_type})
    except (UpstreamTimeout, UpstreamUnavailable) as exc:
        return exc.message
    return None if answer.ok else f"HTTP {answer.status}"


def _read_only(launched: Launched) -> Check:
    name = "Writes nothing outside /tmp (read-only root)"
    if launched.read_only_errors:
        return Check(
            name,
            False,
            "; ".join(launched.read_only_errors[:3]),
            "Write scratch files under /tmp (TMPDIR) and never into /opt/ml/model, which SageMaker may mount "
            "read-only; set caches (HOME, MPLCONFIGDIR, NUMBA_CACHE_DIR …) to /tmp paths in the image.",
        )
    return Check(name, True, "no write refused")


def _sigterm(seconds: float, code: int | None) -> Check:
    name = "Stops within 30 s of SIGTERM"
    if seconds < 30:
        return Check(name, True, f"exited {seconds:.1f} s after SIGTERM (code {code})")
    return Check(
        name,
        False,
        f"still running {seconds:.0f} s after SIGTERM; killed",
        "PID 1 ignores SIGTERM: use an exec-form ENTRYPOINT and a server that drains and exits on it. "
        "SageMaker kills the container 30 s later, cutting off requests in flight.",
    )


def _bind_label(labels: dict[str, str]) -> Check:
    name = f"Label {contract.LABEL_BIND_TO_PORT}=true"
    if labels.get(contract.LABEL_BIND_TO_PORT) == "true":
        return Check(name, True, "present")
    return Check(
        name,
        False,
        "missing",
        f'Add LABEL {contract.LABEL_BIND_TO_PORT}="true" and listen on SAGEMAKER_BIND_TO_PORT when set: '
        "SageMaker refuses images without it in inference pipelines and multi-container endpoints.",
    )


def _entrypoint(config: dict[str, Any]) -> Check:
    name = "Exec-form ENTRYPOINT (the server is PID 1 and gets SIGTERM)"
    entrypoint = list((config.get("Config") or {}).get("Entrypoint") or [])
    if not entrypoint:
        return Check(name, True, "no ENTRYPOINT: SageMaker runs `serve` from PATH")
    if entrypoint[:2] in _SHELL_FORM:
        return Check(
            name,
            False,
            f"shell form: {' '.join(entrypoint)}",
            'Write ENTRYPOINT ["serve"] (JSON array): in shell form /bin/sh is PID 1 and does not pass '
            "SIGTERM on, so SageMaker kills the server mid-request after 30 s.",
        )
    return Check(name, True, str(entrypoint))


def _architecture(config: dict[str, Any]) -> Check:
    name = "Architecture amd64"
    arch = config.get("Architecture", "unknown")
    if arch == "amd64":
        return Check(name, True, arch)
    return Check(
        name,
        False,
        arch,
        "SageMaker's x86 instances run linux/amd64 (arm64 only on Graviton ml.*g instances): "
        "build with --platform linux/amd64.",
    )
