"""Memory of a running server, as Linux accounts for shared pages: summed PSS from smaps_rollup.

PSS (proportional set size) charges each page to the processes that map it in equal parts, so
the PSS of a server's processes adds up to the memory it really takes: a model page that two
forked workers still share counts once, a page each of them copied counts twice. RSS would count
a shared page in every process. https://docs.kernel.org/filesystems/proc.html (smaps_rollup)

`Pss_Anon` is the anonymous part (the heap, the model's arrays, Python's objects), which is what
sharing after fork is about. The rest is files mapped from the page cache (libpython, numpy's
and scikit-learn's shared objects), shared with every process on the machine that maps the same
files, forked or not: its PSS moves with whatever else runs (seen here: 121-173 MB for the same
one-worker server while other agents ran Python from the same venv), so ratios of anonymous PSS
are the steady figure on a shared machine.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pss:
    total_mb: float
    anon_mb: float
    processes: int

    def __str__(self) -> str:
        return f"PSS {self.total_mb:6.1f} MB (anonymous {self.anon_mb:6.1f} MB) in {self.processes} processes"


def rollup_kb(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup's fields in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name.strip()] = int(value.split()[0])
    return fields


def session_pids(leader: int) -> list[int]:
    """Every live process in `leader`'s session (a server started with start_new_session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == leader:  # field 6 of /proc/PID/stat: session id
            pids.append(int(stat.parent.name))
    return sorted(pids)


def summed_pss(pids: list[int]) -> Pss:
    rollups = [rollup_kb(pid) for pid in pids]
    return Pss(
        sum(r["Pss"] for r in rollups) / 1024,
        sum(r["Pss_Anon"] for r in rollups) / 1024,
        len(rollups),
    )


def read_calls(pid: int) -> int:
    """How many read syscalls `pid` made (/proc/PID/io): grows with each request a worker reads."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    return 0


def warm_every_worker(url: str, body_file: Path, content_type: str, workers: list[int], rounds: int = 10) -> None:
    """Requests on fresh connections (ab without -k) until every worker has read some: a worker
    that served nothing has copied nothing, and would flatter the figure."""
    before = {pid: read_calls(pid) for pid in workers}
    for _ in range(rounds):
        subprocess.run(
            ["ab", "-c", "8", "-n", "400", "-p", str(body_file), "-T", content_type, url],
            capture_output=True,
            timeout=60,
            check=True,
        )
        if all(read_calls(pid) > before[pid] + 100 for pid in workers):
            return
    raise RuntimeError(f"some of the workers {workers} never got a request")


def settle(pids: list[int], seconds: float = 0.5) -> Pss:
    """Summed PSS once the servers are idle again (in-flight answers freed)."""
    time.sleep(seconds)
    return summed_pss(pids)
