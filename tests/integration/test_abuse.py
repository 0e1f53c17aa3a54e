"""The abuse suite: what a careless or hostile client sends, against a real `sagehost serve` and a
real `sagehost proxy` (in front of a real `sagehost serve`, which it starts and keeps).

Each case asserts the answer's status (or that the connection was closed when no answer is due),
that the server is unharmed afterwards (the same processes, none replaced; a normal request gets
its 200), and that the summed peak RSS of the server's processes grew by less than a bound.
The HTTP rules are nginx's and h11's (RFC 9112); the limits are set small here, through their
environment variables, so timeouts fire within seconds.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.abuse import (
    MIB,
    ROW,
    Conversation,
    Target,
    cap_address_space,
    exchange,
    padding,
    process_tree,
    request,
    unharmed,
)
from tests.conftest import SAGEHOST, Server, free_port, start_proxy, start_server

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0  # the header, body and keep-alive timeouts set below
SLACK_S = 3.0  # a shared 2-core machine may be late by this much
LIMITS = {
    "SAGEHOST_WORKERS": "2",
    "SAGEHOST_HEADER_TIMEOUT": str(TIMEOUT_S),
    "SAGEHOST_BODY_TIMEOUT": str(TIMEOUT_S),
    "SAGEHOST_MIN_BODY_RATE_KB": "1",
    "SAGEHOST_KEEP_ALIVE_TIMEOUT": str(TIMEOUT_S),
}
PAYLOAD_LIMIT = 6 * MIB  # the default SAGEMAKER_MAX_PAYLOAD_IN_MB
# Memory is bounded by the body, not by what the body claims: no case may raise the servers'
# summed peak RSS by more than a small multiple of the payload limit.
MEMORY_BOUND = 8 * PAYLOAD_LIMIT
# A refused upgrade is answered, never switched (101) or dropped; a server may also ignore
# Upgrade and answer the request as it is (RFC 9110 §7.8).
REFUSED_UPGRADE = {200, 400, 426, 501}
JSON = [("Content-Type", "application/json")]


@pytest.fixture(scope="module", params=["serve", "proxy"])
def target(
    request: pytest.FixtureRequest, iris_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp(f"abuse-{request.param}")
    server: Server
    if request.param == "serve":
        server = start_server(iris_dir, tmp, LIMITS)
    else:
        port = free_port()
        upstream = f"{SAGEHOST} serve --model-dir {iris_dir} --host 127.0.0.1 --port {port} --workers 1"
        server = start_proxy(tmp, LIMITS, "--upstream", f"http://127.0.0.1:{port}/invocations",
                             "--upstream-cmd", upstream, "--upstream-health", "/ping")  # fmt: skip
    try:
        cap_address_space(process_tree(server.process.pid))
        yield Target(request.param, server.url, server.process.pid)
    finally:
        server.stop()


def statuses(talk: Conversation) -> list[int]:
    return [answer.status for answer in talk.answers]


# ---- the request head ----------------------------------------------------------------------------


def test_request_line_and_headers_over_64_kib_are_431_and_closed(target: Target) -> None:
    with unharmed(target, MEMORY_BOUND):
        head = [*JSON, ("Content-Length", str(len(ROW))), *padding(66 * 1024)]
        talk = exchange(target.url, request("POST", "/invocations", head, ROW))
        assert statuses(talk) == [431]
        assert talk.closed


def test_a_mebibyte_of_headers_is_431_not_200(target: Target) -> None:
    with unharmed(target, MEMORY_BOUND):
        head = [*JSON, ("Content-Length", str(len(ROW))), *padding(MIB)]
        talk = exchange(target.url, request("POST", "/invocations", head, ROW))
        assert statuses(talk) == [431]
        assert talk.closed


def test_endless_header_lines_are_cut_off_early(target: Target) -> None:
    """64 MiB of header lines: the server stops reading and closes long before the end."""
    block = b"".join(b"X-Pad: %s\r\n" % (b"a" * 1015) for _ in range(64))  # 64 KiB
    with unharmed(target, MEMORY_BOUND):
        with Conversation(target.url, send_buffer=64 * 1024) as talk:
            talk.send(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            deadline = time.monotonic() + 20
            while talk.sent < 64 * MIB and time.monotonic() < deadline and talk.send(block):
                pass
            talk.wait_closed(SLACK_S)
        assert talk.sent < 8 * MIB, f"the server took {talk.sent / MIB:.1f} MiB of headers"
        assert talk.closed
        assert statuses(talk) in ([], [431])


def test_a_head_that_never_completes_is_closed_after_the_header_timeout(target: Target) -> None:
    with unharmed(target, MEMORY_BOUND):
        with Conversation(target.url) as talk:
            talk.send(b"POST /inv")
            closed_after = talk.wait_closed(TIMEOUT_S + SLACK_S)
        assert closed_after is not None, "still open"
        assert closed_after > TIMEOUT_S / 2
        assert statuses(talk) in ([], [408])


# ---- the body ------------------------------------------------------------------------------------


def test_a_body_trickling_below_the_minimum_rate_is_closed(target: Target) -> None:
    """About 50 bytes/s, each byte well inside the body timeout, far below 1 KiB/s."""
    head = [("Content-Type", "text/csv"), ("Content-Length", "100000")]
    with unharmed(target, MEMORY_BOUND):
        with Conversation(target.url) as talk:
            talk.send(request("POST", "/invocations", head))
            started = time.monotonic()
            while time.monotonic() - started < TIMEOUT_S + SLACK_S and talk.send(b"5.1,3.5,1\n"):
                if talk.wait_closed(0.2) is not None:
                    break
            talk.wait_closed(0.5)
            closed_after = time.monotonic() - started
        assert talk.closed, "still open"
        assert closed_after < TIMEOUT_S + SLACK_S
        assert statuses(talk) in ([], [408])


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_over_the_payload_limit_is_413(target: Target, framing: str) -> None:
    body = b"5.1,3.5,1.4,0.2\n" * ((PAYLOAD_LIMIT + MIB) // 16)
    content = body if framing == "length" else iter([body[i : i + MIB] for i in range(0, len(body), MIB)])
    with unharmed(target, MEMORY_BOUND):
        answer = httpx.post(target.url + "/invocations", content=content, headers={"content-type": "text/csv"})
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"


# ---- framing: one request is one request (RFC 9112 §6.3) ------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param([("Content-Length", "20"), ("Transfer-Encoding", "chunked")], id="length-and-chunked"),
        pytest.param([("Content-Length", "20"), ("Content-Length", "21")], id="two-lengths"),
        pytest.param([("Content-Length", "-1")], id="negative-length"),
    ],
)
def test_ambiguous_framing_is_400_and_closed(target: Target, head: list[tuple[str, str]]) -> None:
    chunked = any(name == "Transfer-Encoding" for name, _ in head)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(ROW), ROW) if chunked else ROW
    with unharmed(target, MEMORY_BOUND):
        talk = exchange(target.url, request("POST", "/invocations", [*JSON, *head], body))
        assert statuses(talk) == [400]
        assert talk.closed


def test_a_malformed_chunk_is_400_and_closed(target: Target) -> None:
    head = [*JSON, ("Transfer-Encoding", "chunked")]
    with unharmed(target, MEMORY_BOUND):
        talk = exchange(target.url, request("POST", "/invocations", head, b"zz\r\n" + ROW + b"\r\n0\r\n\r\n"))
        assert statuses(talk) == [400]
        assert talk.closed


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(request("POST", "/invocations", [*JSON, ("Transfer-Encoding", "chunked")], b"zz\r\n"), id="chunk"),
        pytest.param(b"NONSENSE\r\n\r\n", id="request-line"),
    ],
)
def test_pipelined_requests_after_an_error_are_never_answered(target: Target, bad: bytes) -> None:
    ping = request("GET", "/ping")
    with unharmed(target, MEMORY_BOUND):
        talk = exchange(target.url, ping + bad + ping + ping)
        assert statuses(talk) == [200, 400]
        assert talk.closed


# ---- upgrades: answered, never switched, never dropped ---------------------------------------------


def test_upgrade_to_websocket_is_answered(target: Target) -> None:
    head = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    with unharmed(target, MEMORY_BOUND):
        with Conversation(target.url) as talk:
            talk.send(request("GET", "/ping", head))
            answers = talk.wait_answers(1, timeout=10)
        assert [a.status for a in answers][:1] != [], "no answer"
        assert answers[0].status in REFUSED_UPGRADE


def test_upgrade_to_h2c_is_answered(target: Target) -> None:
    head = [
        *JSON,
        ("Content-Length", str(len(ROW))),
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ]
    with unharmed(target, MEMORY_BOUND):
        with Conversation(target.url) as talk:
            talk.send(request("POST", "/invocations", head, ROW))
            answers = talk.wait_answers(1, timeout=10)
        assert [a.status for a in answers][:1] != [], "no answer"
        assert answers[0].status in REFUSED_UPGRADE


# ---- keep-alive ------------------------------------------------------------------------------------


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(target: Target) -> None:
    with unharmed(target, MEMORY_BOUND):
        with Conversation(target.url) as talk:
            talk.send(request("GET", "/ping"))
            assert [a.status for a in talk.wait_answers(1)] == [200]
            closed_after = talk.wait_closed(TIMEOUT_S + SLACK_S)
        assert closed_after is not None, "still open"
        assert closed_after > TIMEOUT_S / 2


# ---- decoders: memory bounded by the body, not by what it claims ------------------------------------


def _npy_claiming(shape: tuple[int, ...], data: bytes) -> bytes:
    """A valid .npy header (format 1.0) declaring `shape`, followed by only `data`."""
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _recordio_claiming(length: int, data: bytes) -> bytes:
    """A RecordIO record header (magic, length) claiming `length` bytes, followed by only `data`."""
    return struct.pack("<II", 0xCED7230A, length) + data


def test_the_npy_helper_writes_what_numpy_reads() -> None:
    array = np.load(io.BytesIO(_npy_claiming((2, 1), np.array([1.0, 2.0]).tobytes())))
    assert array.tolist() == [[1.0], [2.0]]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("text/libsvm", b"0 999999:1\n" * 2000, id="libsvm-wide-index"),
        pytest.param("application/x-npy", _npy_claiming((1_000_000_000, 10), b"\0" * 80), id="npy-huge-shape"),
        pytest.param("application/x-recordio-protobuf", _recordio_claiming(2**31 - 1, b"\0" * 64), id="recordio"),
        pytest.param("application/json", b"[" * 100_000 + b"]" * 100_000, id="deeply-nested-json"),
        pytest.param("application/jsonlines", b"[" * 100_000 + b"]" * 100_000 + b"\n", id="deeply-nested-jsonl"),
        pytest.param("text/csv", b",".join([b"1"] * 1_000_000) + b"\n", id="a-million-csv-columns"),
    ],
)
def test_decoder_attacks_are_400(target: Target, content_type: str, body: bytes) -> None:
    with unharmed(target, MEMORY_BOUND):
        answer = httpx.post(target.url + "/invocations", content=body, headers={"content-type": content_type})
        assert answer.status_code == 400, answer.text
        assert "Traceback" not in answer.text
