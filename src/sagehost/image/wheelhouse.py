"""The build context's wheelhouse: sagehost itself and every dependency, resolved on the host.

The image gets the very sagehost that builds it, as a wheel made from its source tree (or the
wheel it was installed from), so building works before and without a release on any index.
Dependencies are downloaded on the host, where pip already works (proxies, certificates,
private indexes), as wheels for the image's platform and Python, and installed in the image
with `--no-index`. Binary wheels only: a source distribution would need a compiler in the image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path

from sagehost.errors import StartupError

_ARCHES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
_OLDEST_MANYLINUX_MINOR = 17  # manylinux2014


class WheelhouseError(StartupError):
    """The image's dependencies could not be resolved into wheels."""


@dataclass(frozen=True)
class Target:
    """The Python and C library inside the base image, which the wheels must fit."""

    python: str  # "3.11"
    glibc: str  # "2.36"
    platform: str  # "linux/amd64"

    @property
    def wheel_platforms(self) -> list[str]:
        arch = _ARCHES.get(self.platform)
        if arch is None:
            raise WheelhouseError(f"--platform {self.platform}: sagehost builds for {', '.join(_ARCHES)}.")
        major, minor = (int(part) for part in self.glibc.split(".")[:2])
        tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, _OLDEST_MANYLINUX_MINOR - 1, -1)]
        return [*tags, f"manylinux2014_{arch}"]


def own_wheel(dest: Path) -> Path:
    """A wheel of the installed sagehost, in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    dist = distribution("sagehost")
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    url = origin.get("url", "")
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if path.is_file() and path.suffix == ".whl":
            return Path(shutil.copy2(path, dest))
        if (path / "pyproject.toml").is_file():
            _pip("wheel", "--no-deps", "--quiet", "-w", str(dest), str(path))
            return _newest(dest, dist.version)
    _pip("download", "--no-deps", "--quiet", "--only-binary=:all:", "-d", str(dest), f"sagehost=={dist.version}")
    return _newest(dest, dist.version)


def resolve(dest: Path, wheel: Path, extras: tuple[str, ...], requirements: Path | None, target: Target) -> int:
    """Download every dependency for `target` into `dest`; the number of wheels there."""
    spec = f"sagehost[{','.join(extras)}] @ {wheel.resolve().as_uri()}"
    args = ["download", "--quiet", "--only-binary=:all:", "-d", str(dest), "--implementation", "cp"]
    args += ["--python-version", target.python]
    for platform in target.wheel_platforms:
        args += ["--platform", platform]
    args.append(spec)
    if requirements is not None:
        args += ["-r", str(requirements)]
    _pip(*args)
    return len(list(dest.glob("*.whl")))


def _pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " / ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise WheelhouseError(
            f"pip {args[0]} failed: {tail}. Every dependency needs a binary wheel for the image's "
            "platform and Python; pin a version that has one, or use a base image that matches it."
        )


def _newest(dest: Path, version: str) -> Path:
    wheels = sorted(dest.glob(f"sagehost-{version}-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise WheelhouseError(f"No sagehost {version} wheel was made in {dest}.")
    return wheels[-1]
