"""What a careless or hostile client does to a server, byte for byte, and how the server's
processes fare: raw-socket conversations, answers parsed from the wire, and the process tree's
pids and memory read from /proc.

Memory is the tree's summed peak RSS: each process's high-water mark (VmHWM) is reset through
/proc/PID/clear_refs before a case (Linux >= 4.0, `echo 5`), so a peak that was freed again
before the case ended still counts. https://docs.kernel.org/filesystems/proc.html
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MIB = 1024 * 1024
ROW = b"[5.1, 3.5, 1.4, 0.2]"


@dataclass
class Answer:
    status: int
    head: bytes
    body: bytes


def split_answers(data: bytes) -> list[Answer]:
    """The complete answers in `data`, in order, interim (1xx) ones left out."""
    answers: list[Answer] = []
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return answers
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return answers
        if status >= 200:
            answers.append(Answer(status, head, rest[:length]))
        data = rest[length:]


class Conversation:
    """One raw TCP connection to a server on 127.0.0.1, every operation bounded in time."""

    def __init__(self, url: str, send_buffer: int | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket()
        if send_buffer is not None:  # before connect, so the kernel holds little on our side
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        self.received = b""
        self.closed = False
        self.sent = 0

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes, timeout: float = 5) -> bool:
        """Send all of `data`; False once the server has closed (or reset) the connection, or has
        stopped reading for `timeout`."""
        self.sock.settimeout(timeout)
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                return False
            self.sent += sent
            view = view[sent:]
        return True

    def _read(self, timeout: float) -> bool:
        """Read what arrives within `timeout`; False when nothing came (the connection is open and quiet)."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.received += chunk
        return True

    @property
    def answers(self) -> list[Answer]:
        return split_answers(self.received)

    def wait_answers(self, count: int, timeout: float = 10) -> list[Answer]:
        """Read until `count` answers arrived, the server closed, or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while len(self.answers) < count and not self.closed and time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        return self.answers

    def wait_closed(self, timeout: float) -> float | None:
        """Seconds until the server closed the connection, reading whatever it sends meanwhile;
        None if it is still open after `timeout`."""
        started = time.monotonic()
        deadline = started + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        return time.monotonic() - started if self.closed else None


def exchange(url: str, raw: bytes, timeout: float = 10) -> Conversation:
    """Send `raw` on a new connection and read until the server closes it (or `timeout`)."""
    with Conversation(url) as talk:
        talk.send(raw)
        talk.wait_closed(timeout)
    return talk


def request(method: str, path: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    """One HTTP/1.1 request as bytes; headers exactly as given, repeats kept, nothing added but Host."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def padding(total: int, line: int = 1024) -> list[tuple[str, str]]:
    """`X-Pad-N: aaa…` headers adding up to a little over `total` bytes, CRLFs included."""
    value = "a" * (line - 15)
    return [(f"X-Pad-{i:05d}", value) for i in range(total // line + 1)]


# ---- the server's processes ---------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, found by parent pid in /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = [root]
    for pid in tree:
        tree += sorted(child for child, parent in parents.items() if parent == pid)
    return tree


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cap_address_space(pids: list[int], headroom: int = 4 * 1024 * MIB) -> None:
    """A safety net for a shared machine, not part of what is tested: each process may map at most
    `headroom` more than it does now, so a decoder that tries to allocate tens of GiB gets a
    MemoryError instead of the machine's memory (overcommit would otherwise let it)."""
    for pid in pids:
        limit = _status_kib(pid, "VmSize") * 1024 + headroom
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


@dataclass
class Footprint:
    """The tree's memory from now on: its summed RSS at the start and its summed peak since."""

    pids: list[int]
    start: int = field(init=False)

    def __post_init__(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.start = sum(_status_kib(pid, "VmRSS") for pid in self.pids) * 1024

    def growth(self) -> int:
        """Bytes the summed peak RSS rose above the start."""
        return sum(_status_kib(pid, "VmHWM") for pid in self.pids) * 1024 - self.start


@dataclass
class Target:
    """A running server under test: its root process and its URL."""

    name: str
    url: str
    pid: int

    def serves(self) -> None:
        """A normal request still gets its 200, on a fresh connection."""
        assert httpx.get(self.url + "/ping", timeout=10).status_code == 200
        answer = httpx.post(
            self.url + "/invocations", content=ROW, headers={"content-type": "application/json"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == ["setosa"]


@contextlib.contextmanager
def unharmed(target: Target, memory_bound: int) -> Iterator[None]:
    """Around one abuse case: afterwards every process of the server is the one it was (none died
    and was replaced), a normal request gets its 200, and the summed peak RSS grew by less than
    `memory_bound`."""
    pids = process_tree(target.pid)
    footprint = Footprint(pids)
    yield
    after = process_tree(target.pid)
    assert after == pids, f"{target.name}: processes before {pids}, after {after} (a worker died)"
    grown = footprint.growth()
    target.serves()
    assert grown < memory_bound, f"{target.name}: peak RSS grew {grown / MIB:.1f} MiB (bound {memory_bound / MIB:g})"
