"""The container engine: docker or podman, whichever is present, driven through its CLI.

Both take the same commands for everything sagehost does (build, run, inspect, kill, logs), so
one small wrapper serves both. Nothing here talks to a daemon's API: a user's `docker` may be a
remote context or a podman alias, and the CLI is what they debug with.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sagehost.errors import StartupError

ENGINES = ("docker", "podman")


class EngineError(StartupError):
    """The container engine is missing or refused a command."""


@dataclass(frozen=True)
class Engine:
    name: str
    path: str

    def command(self, *args: str) -> list[str]:
        return [self.path, *args]

    def run(
        self, *args: str, timeout: float | None = None, stdin: str | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        """Run an engine command that must succeed; its stdout. `stdin` is how a secret gets in:
        never as an argument, which any user of the machine can read in the process list."""
        result = subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False, input=stdin, env=env
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise EngineError(f"`{self.name} {' '.join(args[:2])} …` failed: " + " / ".join(detail))
        return result.stdout

    def stream(
        self, *args: str, say: Callable[[str], None], env: Mapping[str, str] | None = None
    ) -> tuple[int, list[str]]:
        """Run a long engine command (build, push), its output passed to `say` line by line as
        it comes; its exit code and last lines. Through `say`, not our stderr's file descriptor,
        so it works wherever the caller's output goes."""
        last: deque[str] = deque(maxlen=8)
        with subprocess.Popen(
            self.command(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        ) as process:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip()
                last.append(line)
                say(line)
        return process.returncode, list(last)

    def inspect_image(self, image: str) -> dict[str, Any]:
        """The image's config (Architecture, Config.Entrypoint, Config.Labels, Size …)."""
        try:
            data = json.loads(self.run("image", "inspect", image))
        except EngineError:
            raise EngineError(f"No image {image} in {self.name}: build it first (sagehost build) or pull it.") from None
        first: dict[str, Any] = data[0]
        return first

    def image_exists(self, image: str) -> bool:
        result = subprocess.run(self.command("image", "inspect", image), capture_output=True, check=False)
        return result.returncode == 0


def find_engine(preferred: str | None = None) -> Engine:
    """`preferred` if given; else docker when its daemon answers, else podman (daemonless)."""
    names: Sequence[str] = (preferred,) if preferred else ENGINES
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        if name == "docker" and not preferred and not _docker_daemon_answers(path):
            continue  # a docker client without an engine, as on many CI runners and this project's machines
        return Engine(name, path)
    wanted = preferred or "docker or podman"
    raise EngineError(f"No container engine: install {wanted} (podman needs no daemon) or pass --builder.")


def _docker_daemon_answers(path: str) -> bool:
    try:
        result = subprocess.run([path, "info"], capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0
