"""Workers survive and are replaced: real `sagehost serve` and `sagehost proxy` processes whose
workers are killed with SIGKILL (what the OOM killer sends) while requests keep coming; and the
parent's 503 answer while the model loads, which no slow client may block."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagehost.http.loading import HEAD_CAP, HEAD_TIMEOUT_S, MAX_OPEN, LoadingResponder
from tests.conftest import Server, free_port, running, slow_model_dir, start_proxy, start_server
from tests.integration.test_proxy import children_of, fake, parent_of, scorer_pid

ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
REPLACED_WITHIN_S = 5.0


def fresh_client(url: str) -> httpx.Client:
    """A new connection per request: a kept-alive one may belong to the worker we kill."""
    return httpx.Client(base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


class Stream:
    """Requests one after another in a thread until stopped: (started, ended, status or error)."""

    def __init__(self, url: str, send: Callable[[httpx.Client], httpx.Response]) -> None:
        self.results: list[tuple[float, float, int | str]] = []
        self._url = url
        self._send = send
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        with fresh_client(self._url) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                status: int | str
                try:
                    status = self._send(client).status_code
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                self.results.append((started, time.monotonic(), status))

    def answered_after(self, moment: float, count: int = 3, timeout: float = 20) -> None:
        """Wait until `count` requests begun after `moment` were answered 200."""
        wait_for(lambda: sum(1 for r in list(self.results) if r[0] > moment and r[2] == 200) >= count, timeout)

    def check(self, kills: list[float]) -> None:
        """Every request succeeded but, at most, the one each kill caught in flight in its victim."""
        failed = [r for r in self.results if r[2] != 200]
        caught = [r for r in failed if any(r[0] <= k <= r[1] for k in kills)]
        assert failed == caught and len(failed) <= len(kills), failed


def predict(client: httpx.Client) -> httpx.Response:
    return client.post("/invocations", json=ROW)


def wait_for(what: Callable[[], Any], timeout: float, every: Callable[[], None] = lambda: None) -> Any:
    """`what()` once it is truthy; `every()` runs between tries (asserting as it goes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        every()
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def kill_and_see_replaced(
    server: Server, workers: set[int], others: frozenset[int] = frozenset()
) -> tuple[int, int, float]:
    """SIGKILL one of `workers` (`others` are the parent's other children); (victim, its replacement, when)."""
    victim = min(workers)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    new = wait_for(lambda: children_of(server.process.pid) - workers - others - {victim}, REPLACED_WITHIN_S)
    assert len(new) == 1 and victim not in children_of(server.process.pid)
    (replacement,) = new
    line = f"Worker {victim} was killed by SIGKILL (the OOM killer does this); starting a replacement"
    assert line in server.log
    wait_for(lambda: f"Started worker {replacement} in place of worker {victim}" in server.log, 2)  # logged after fork
    return victim, replacement, killed


def ping(client: httpx.Client) -> httpx.Response:
    return client.get("/ping")


def forward(client: httpx.Client) -> httpx.Response:
    return client.post("/invocations", content=b"1")


@pytest.mark.parametrize("args", [(), ("--no-preload",)], ids=["preloaded", "loaded-after-fork"])
def test_a_killed_worker_is_replaced_while_the_others_answer(
    iris_dir: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    with running(iris_dir, tmp_path, {"SAGEHOST_WORKERS": "2"}, *args) as server:
        first = children_of(server.process.pid)
        assert len(first) == 2
        with Stream(server.url, predict) as predictions, Stream(server.url, ping) as pings:
            time.sleep(0.2)
            victim, replacement, killed = kill_and_see_replaced(server, first)
            for stream in (predictions, pings):
                stream.answered_after(killed)
            # Now the other original: from here on only replacements can answer.
            _, _, killed_again = kill_and_see_replaced(server, (first - {victim}) | {replacement})
            for stream in (predictions, pings):
                stream.answered_after(killed_again)
        for stream in (predictions, pings):
            stream.check([killed, killed_again])
        assert server.log.count("starting a replacement") == 2
        assert "Bad file descriptor" not in server.log and "Traceback" not in server.log
        with fresh_client(server.url) as client:
            assert predict(client).json() == ["setosa"]
        assert server.stop() == 0


def test_ten_deaths_in_a_minute_stop_the_server(iris_dir: Path, tmp_path: Path) -> None:
    server = start_server(iris_dir, tmp_path, {"SAGEHOST_WORKERS": "2"})
    killed: set[int] = set()

    def kill_every_worker() -> bool:
        if server.process.poll() is not None:
            return True
        with contextlib.suppress(FileNotFoundError):  # the parent is gone between the poll and here
            for pid in children_of(server.process.pid) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        return False

    try:
        wait_for(kill_every_worker, timeout=30)
        assert server.exited(timeout=30) == 1
    finally:
        server.stop()
    assert len(killed) == 10
    assert "Workers have died 10 times within 60 s" in server.log
    assert "SageMaker replaces an instance whose server stops; stopping the server." in server.log
    assert server.log.count("starting a replacement") == 9


def test_workers_stop_when_the_supervisor_is_killed(iris_dir: Path, tmp_path: Path) -> None:
    """No orphaned worker keeps the port and serves on unsupervised (PR_SET_PDEATHSIG)."""
    server = start_server(iris_dir, tmp_path, {"SAGEHOST_WORKERS": "2"})
    try:
        workers = children_of(server.process.pid)
        assert len(workers) == 2
        server.process.kill()
        server.process.wait(timeout=10)

        def gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() for pid in workers)

        wait_for(gone, timeout=REPLACED_WITHIN_S)
    finally:
        server.stop()


def test_sigterm_during_back_off_drains_and_exits_at_once(iris_dir: Path, tmp_path: Path) -> None:
    server = start_server(iris_dir, tmp_path, {"SAGEHOST_WORKERS": "2"})
    killed: set[int] = set()
    try:
        while len(killed) < 7:  # from the sixth death on, a replacement waits a whole second
            for pid in wait_for(lambda: children_of(server.process.pid) - killed, REPLACED_WITHIN_S):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        wait_for(lambda: server.log.count("starting a replacement") == len(killed), 2)
        asked = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - asked < 3
    finally:
        server.stop()
    assert "Received SIGTERM" in server.log
    assert "Started worker" not in server.log.split("Received SIGTERM")[1]  # the pending one never started


def test_a_killed_proxy_worker_is_replaced_and_the_scoring_server_kept(tmp_path: Path) -> None:
    port = free_port()
    server = start_proxy(tmp_path, {"SAGEHOST_WORKERS": "2"}, "--upstream", f"http://127.0.0.1:{port}/x",
                         "--upstream-cmd", fake("echo", port), "--upstream-health", "/health")  # fmt: skip
    try:
        scorer = scorer_pid(server)
        keeper = parent_of(scorer)
        workers = children_of(server.process.pid) - {keeper}
        assert len(workers) == 2
        with Stream(server.url, forward) as forwards, Stream(server.url, ping) as pings:
            time.sleep(0.2)
            _, replacement, killed = kill_and_see_replaced(server, workers, frozenset({keeper}))
            for stream in (forwards, pings):
                stream.answered_after(killed)
        for stream in (forwards, pings):
            stream.check([killed])
        assert children_of(server.process.pid) == (workers | {keeper, replacement}) - {min(workers)}
        assert scorer_pid(server) == scorer  # the scoring server was not restarted
    finally:
        assert server.stop() == 0


# ---- the parent's 503 while the model loads ---------------------------------------------------


def test_idle_connections_do_not_stop_the_503_while_workers_load(iris_dir: Path, tmp_path: Path) -> None:
    model_dir = slow_model_dir(iris_dir, tmp_path, seconds=4)
    server = start_server(model_dir, tmp_path, {"SAGEHOST_WORKERS": "2"}, "--no-preload", wait=False)
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    try:
        with fresh_client(server.url) as client:
            wait_for(lambda: _status(client) == 503, 10)
            with contextlib.ExitStack() as idle:
                silent = [idle.enter_context(socket.create_connection((host, port), timeout=5)) for _ in range(40)]
                started = time.monotonic()
                assert client.get("/ping").status_code == 503
                assert time.monotonic() - started < 0.5  # not 40 × a per-connection wait
                assert silent[0].recv(4096).startswith(b"HTTP/1.1 503 ")  # answered after the head's timeout
            wait_for(lambda: _status(client) == 200, 30)
    finally:
        assert server.stop() == 0


def _status(client: httpx.Client) -> int | None:
    try:
        return client.get("/ping", timeout=2).status_code
    except httpx.TransportError:
        return None


@pytest.fixture
def responder() -> Iterator[tuple[LoadingResponder, tuple[str, int]]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        with LoadingResponder(sock) as loading:
            yield loading, sock.getsockname()


def _peek(conn: socket.socket) -> bytes:
    """What has arrived on `conn` so far, left unread."""
    try:
        return conn.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def _poll_until_answered(loading: LoadingResponder, conn: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while not _peek(conn) and time.monotonic() < deadline:
        loading.poll(0.01)
    return _peek(conn)


def test_the_responder_answers_a_whole_head_at_once_and_a_silent_client_after_its_timeout(
    responder: tuple[LoadingResponder, tuple[str, int]],
) -> None:
    loading, address = responder
    with socket.create_connection(address) as silent, socket.create_connection(address) as ping:
        ping.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        answer = _poll_until_answered(loading, ping, 1)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b'"code":"model_not_ready"' in answer and b"connection: close" in answer
        assert _peek(silent) == b""
        assert _poll_until_answered(loading, silent, HEAD_TIMEOUT_S + 1).startswith(b"HTTP/1.1 503 ")
        assert HEAD_TIMEOUT_S - 0.1 < time.monotonic() - started < HEAD_TIMEOUT_S + 1


def test_a_head_past_the_cap_is_answered_without_waiting_for_its_end(
    responder: tuple[LoadingResponder, tuple[str, int]],
) -> None:
    loading, address = responder
    with socket.create_connection(address) as flood:
        flood.sendall(b"GET /" + b"a" * (4 * HEAD_CAP))  # a head that never ends
        started = time.monotonic()
        assert _poll_until_answered(loading, flood, 1).startswith(b"HTTP/1.1 503 ")
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        loading.poll(0)  # nothing ready: it returns at once, whatever the open connections do
        assert time.monotonic() - started < 0.05


def test_the_responder_holds_at_most_max_open_and_still_answers_the_rest(
    responder: tuple[LoadingResponder, tuple[str, int]],
) -> None:
    loading, address = responder
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(socket.create_connection(address)) for _ in range(MAX_OPEN + 5)]
        deadline = time.monotonic() + 2
        while sum(bool(_peek(c)) for c in conns) < 5 and time.monotonic() < deadline:
            loading.poll(0.01)
        assert sum(bool(_peek(c)) for c in conns) == 5  # those past the cap, answered as they came
        started = time.monotonic()
        loading.close()  # the rest are answered as the responder closes
        assert time.monotonic() - started < 0.5
        assert all(_peek(c).startswith(b"HTTP/1.1 503 ") for c in conns)


def test_on_a_shared_selector_the_caller_dispatches_the_callbacks() -> None:
    with socket.socket() as sock, selectors.DefaultSelector() as selector:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        loading = LoadingResponder(sock, selector)
        with socket.create_connection(sock.getsockname()) as client:
            client.sendall(b"GET /ping HTTP/1.1\r\n\r\n")
            deadline = time.monotonic() + 1
            while not _peek(client) and time.monotonic() < deadline:
                for key, _ in selector.select(0.01):
                    key.data()
            assert _peek(client).startswith(b"HTTP/1.1 503 ")
        loading.close()
        assert len(selector.get_map()) == 0  # the listening socket is left to its owner, unregistered
