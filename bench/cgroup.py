"""Run a bench's processes in one fresh cpu cgroup, as a container's processes run.

Linux's autogroup (sched(7), `kernel.sched_autogroup_enabled`) gives every session its own
scheduling group, so processes started with `start_new_session` (the upstream, each proxy) share
the CPU as groups rather than as tasks. It only applies in the root cgroup: inside a container,
SageMaker's included, the container's processes are scheduled as plain tasks. Against MLflow this
changes which proxy keeps what (bench/README.md), so `bench/proxy.py --cgroup` measures the way
a container would run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def own_cgroup(name: str) -> Iterator[Path]:
    """This process, and everything it starts meanwhile, in a new cpu cgroup `name`; removed
    afterwards. OSError when the machine does not allow it (it needs root)."""
    parent = _V1 if (_V1 / "cgroup.procs").exists() else _V2
    if parent == _V2:  # a child is scheduled as a group of its own only with the cpu controller on
        if "cpu" not in (_V2 / "cgroup.controllers").read_text().split():
            raise OSError("this machine's cgroup v2 hierarchy has no cpu controller")
        (_V2 / "cgroup.subtree_control").write_text("+cpu")
    here = parent / name
    here.mkdir(exist_ok=True)
    (here / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield here
    finally:
        (parent / "cgroup.procs").write_text(str(os.getpid()))
        with contextlib.suppress(OSError):  # still busy if a process it started outlived the bench
            here.rmdir()


def autogroup_enabled() -> bool:
    path = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return path.exists() and path.read_text().strip() == "1"
