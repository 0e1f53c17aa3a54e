"""Start a serving container (or, without one, the same `serve` process) the way SageMaker does,
wait for its health check, and stop it with SageMaker's SIGTERM and 30 s grace.

The container gets a read-only root with a writable /tmp, and the model mounted read-only at
/opt/ml/model: the strictest faithful setting, so anything the server writes elsewhere fails
here first, not on an endpoint after a 15-minute deployment.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sagehost import contract
from sagehost.errors import StartupError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from sagehost.http.outbound import send
from sagehost.image.engine import Engine
from sagehost.local.modes import Run

STOP_GRACE_S = 30  # SageMaker sends SIGKILL 30 s after SIGTERM
_POLL_S = 0.5
_PING_ANSWER_BYTES = 64 * 1024  # /ping's answer is read only for its status


class HealthCheckFailed(StartupError):
    """The container never answered /ping with 200 in time, or died first."""


@dataclass
class Launched:
    """A running server: where it answers, and its last log lines for failure reports."""

    process: subprocess.Popen[bytes]
    url: str
    label: str
    container: str | None = None
    engine: Engine | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    read_only_errors: list[str] = field(default_factory=list)
    """Lines that show a write refused by the read-only root: each is a path the image must not write."""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(list(self.tail)[-lines:])

    def stop(self) -> tuple[float, int | None]:
        """SIGTERM, then SIGKILL after 30 s, as SageMaker stops a container; (seconds, exit code)."""
        started = time.monotonic()
        if self.process.poll() is None:
            if self.engine is not None and self.container is not None:
                # `stop` sends the image's stop signal (SIGTERM) and kills after the grace.
                subprocess.run(
                    self.engine.command("stop", "-t", str(STOP_GRACE_S), self.container),
                    capture_output=True,
                    check=False,
                )
            else:
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S + 5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return time.monotonic() - started, self.process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch_container(
    engine: Engine,
    image: str,
    run: Run,
    model_dir: Path | None,
    host_port: int,
    *,
    extra_env: dict[str, str] | None = None,
    read_only: bool = True,
) -> Launched:
    name = f"sagehost-local-{secrets.token_hex(4)}"
    args = ["run", "--rm", "--name", name, "--network", "bridge", "-p", f"127.0.0.1:{host_port}:{run.container_port}"]
    if read_only:
        args += ["--read-only", "--tmpfs", "/tmp:rw,exec"]
    if model_dir is not None:
        args += ["-v", f"{model_dir.resolve()}:/opt/ml/model:ro"]
    for key, value in {**run.env, **(extra_env or {})}.items():
        args += ["-e", f"{key}={value}"]
    launched = start_process(engine.command(*args, image, "serve"), None, f"http://127.0.0.1:{host_port}", "container")
    launched.container, launched.engine = name, engine
    return launched


def launch_process(run: Run, model_dir: Path, port: int, extra_env: dict[str, str] | None = None) -> Launched:
    """`--no-container`: the same `sagehost serve`, on loopback, with SageMaker's environment."""
    env = {**os.environ, **run.env, **(extra_env or {}), "SM_MODEL_DIR": str(model_dir.resolve())}
    env["SAGEHOST_HOST"] = "127.0.0.1"
    if "SAGEMAKER_BIND_TO_PORT" in env:
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
    else:
        env["SAGEHOST_PORT"] = str(port)
    return start_process([sys.executable, "-m", "sagehost", "serve"], env, f"http://127.0.0.1:{port}", "serve")


def start_process(command: Sequence[str], env: dict[str, str] | None, url: str, label: str) -> Launched:
    """Run `command` (a server, or the engine running its container) in a session of its own, so
    that our Ctrl-C reaches it only through `Launched.stop`; its output goes to our stderr with
    `[label]` before each line. `url` is where it will answer."""
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # our Ctrl-C stops it in order, through stop()
    )
    launched = Launched(process, url, label)
    threading.Thread(target=_relay, args=(launched,), daemon=True).start()
    return launched


def _relay(launched: Launched) -> None:
    """Its output, prefixed, to our stderr; the last lines kept for failure reports."""
    assert launched.process.stdout is not None
    for raw in launched.process.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip()
        launched.tail.append(line)
        if "Read-only file system" in line:
            launched.read_only_errors.append(line)
        print(f"[{launched.label}] {line}", file=sys.stderr, flush=True)
    launched.process.stdout.close()  # at its end: the process has exited or closed it


def ping(url: str) -> int | None:
    """/ping's status within SageMaker's 2 s, or None when nothing answered in time."""
    try:
        return send("GET", url + "/ping", timeout=contract.PING_TIMEOUT_S, max_body=_PING_ANSWER_BYTES).status
    except (UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable):
        return None


def wait_healthy(launched: Launched, deadline_s: float) -> float:
    """Seconds until the first 200 from /ping; HealthCheckFailed as SageMaker words it."""
    started = time.monotonic()
    last: int | None = None
    while time.monotonic() - started < deadline_s:
        if launched.process.poll() is not None:
            raise HealthCheckFailed(_failure(f"the {launched.label} exited with code {launched.process.returncode}"))
        last = ping(launched.url)
        if last == 200:
            return time.monotonic() - started
        time.sleep(_POLL_S)
    seen = f"its last answer was HTTP {last}" if last else "nothing answered within 2 s"
    raise HealthCheckFailed(_failure(f"no 200 within {deadline_s:.0f} s; {seen}"))


def _failure(why: str) -> str:
    # DescribeEndpoint's FailureReason, word for word, then what SageMaker would not tell you.
    return f"The primary container for production variant AllTraffic did not pass the ping health check. Here: {why}."
