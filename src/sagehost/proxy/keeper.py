"""Start the scoring server, forward its output with a prefix, restart it with back-off when it
dies, stop it on SIGTERM, and give up (exit non-zero) when it cannot be kept up.

Runs as its own process, forked by the proxy's supervisor, so a blocking read of the child's
output never shares a process with the event loops that serve requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

log = logging.getLogger("sagehost.proxy")

PREFIX = "[upstream] "
GIVE_UP_AFTER = 5  # failed starts within RESTART_WINDOW_S
RESTART_WINDOW_S = 60.0
STOP_GRACE_S = 10.0


def upstream_env(scratch: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """A writable temp dir of its own: SAS's and H2O's JVM scorers write temp files, and
    SageMaker's secured containers may not let them write /tmp."""
    scratch.mkdir(parents=True, exist_ok=True)
    java = environ.get("JAVA_TOOL_OPTIONS", "")
    return {
        **environ,
        "TMPDIR": str(scratch),
        "JAVA_TOOL_OPTIONS": f"{java} -Djava.io.tmpdir={scratch}".strip(),
    }


def keep(command: str, scratch: Path) -> int:
    """The keeper process's main: returns its exit code (0 after SIGTERM, 1 after giving up)."""
    stopping = threading.Event()  # set by the signal handler, read by the loop
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if child is not None:
            _stop(child)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    failures: list[float] = []
    env = upstream_env(scratch, os.environ)
    while not stopping.is_set():
        # exec: the scoring server itself gets our signals, not a shell in between
        child = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=scratch,
            start_new_session=True,
        )
        log.info("Started the scoring server (pid %d): %s", child.pid, command)
        if stopping.is_set():  # SIGTERM arrived between the loop's check and the start
            _stop(child)
        _forward(child)
        code = child.wait()
        if stopping.is_set():
            break
        failures = [t for t in failures if time.monotonic() - t < RESTART_WINDOW_S] + [time.monotonic()]
        if len(failures) >= GIVE_UP_AFTER:
            log.error("The scoring server exited %d times within %.0f s; giving up.", len(failures), RESTART_WINDOW_S)
            return 1
        delay = min(10.0, 0.5 * 2 ** (len(failures) - 1))
        log.error("The scoring server exited with %d; restarting it in %.1f s.", code, delay)
        time.sleep(delay)
    return 0


def _forward(child: subprocess.Popen[bytes]) -> None:
    assert child.stdout is not None
    out = sys.stderr.buffer
    for line in iter(child.stdout.readline, b""):
        out.write(PREFIX.encode() + line if line.endswith(b"\n") else PREFIX.encode() + line + b"\n")
        out.flush()


def _stop(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
