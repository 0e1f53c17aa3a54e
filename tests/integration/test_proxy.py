"""`sagehost proxy` in front of real scoring servers it starts and supervises: MLflow's scoring
server (a real third-party server), and SCR- and H2O-shaped servers written from their APIs."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.abuse import MIB, Footprint, cap_address_space, process_tree
from tests.conftest import Server, free_port, start_proxy, start_sagehost, wait_healthy
from tests.integration.fake_scorers import fraud_probability

FAKE = Path(__file__).with_name("fake_scorers.py")
VENV_BIN = Path(sys.executable).parent


def fake(kind: str, port: int) -> str:
    return f"{sys.executable} {FAKE} {kind} {port}"


def proxy(tmp: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> Server:
    return start_proxy(tmp, {"SAGEHOST_WORKERS": "2", **(env or {})}, *args, wait=wait)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/invocations", "--upstream-cmd", fake("echo", port),
                   "--upstream-health", "/health", env={"SAGEHOST_TIMEOUT": "1"})  # fmt: skip
    yield server, port
    server.stop()


def test_transparent_forward_keeps_body_headers_status_and_query(echo: tuple[Server, int]) -> None:
    server, _ = echo
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Custom-Attributes": "trace=7"}
    answer = server.client.post("/invocations?variant=b", content=b"1,2\n3,4", headers=headers)
    assert answer.status_code == 200
    body = answer.json()
    assert body == {
        "body": "1,2\n3,4",
        "content_type": "text/csv",
        "path": "/invocations?variant=b",
        "attributes": "trace=7",
    }
    assert answer.headers["x-amzn-sagemaker-custom-attributes"] == "echoed=1"  # the upstream's, not ours

    quiet = server.client.post("/invocations", content=b"1", headers={"X-Amzn-SageMaker-Custom-Attributes": "quiet=1"})
    assert quiet.headers["x-amzn-sagemaker-custom-attributes"] == "quiet=1"  # echoed, or SageMaker drops them


def test_redirects_are_followed_inside_the_proxy(tmp_path: Path) -> None:
    port = free_port()
    upstream = f"http://127.0.0.1:{port}/old?to=/invocations"
    server = proxy(tmp_path, "--upstream", upstream, "--upstream-cmd", fake("echo", port))
    try:
        answer = server.client.post("/invocations", content=b"[1]", headers={"Content-Type": "application/json"})
        assert answer.status_code == 200 and answer.json()["path"] == "/invocations"
    finally:
        server.stop()


# ---- an upstream that breaks the rules: the proxy never invents, duplicates or changes work ----


@pytest.fixture
def abusive(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """A proxy with one worker (so one pool) in front of an upstream whose POST /abuse?do=…
    misbehaves as asked (fake_scorers.py); its answers capped at 1 MiB, its timeout 2 s."""
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/abuse", "--upstream-cmd", fake("echo", port),
                   "--upstream-max-body-mb", "1", env={"SAGEHOST_WORKERS": "1", "SAGEHOST_TIMEOUT": "2"})  # fmt: skip
    cap_address_space(process_tree(server.process.pid))  # a safety net for the shared machine
    yield server, f"http://127.0.0.1:{port}"
    server.stop()


def error_of(answer: httpx.Response) -> tuple[int, str, str]:
    error = answer.json()["error"]
    return answer.status_code, error["code"], error["message"]


def still_serves(server: Server) -> None:
    answer = server.client.post("/invocations?do=moved&to=/invocations&status=307", content=b"1,2")
    assert answer.status_code == 200 and answer.json()["body"] == "1,2"


def test_a_post_the_upstream_read_and_dropped_is_a_502_and_never_sent_twice(abusive: tuple[Server, str]) -> None:
    """The upstream answers the first request on a pooled connection, then reads the second and
    closes it: it may have scored it, so the proxy answers 502 instead of sending it again."""
    server, upstream = abusive
    assert server.client.post("/invocations?do=close-second", content=b"1").status_code == 200
    status, code, message = error_of(server.client.post("/invocations?do=close-second", content=b"2"))
    assert (status, code) == (502, "upstream_unavailable") and "closed the connection mid-request" in message
    assert httpx.get(upstream + "/stats").json()["abuse"] == 2  # the second POST arrived once
    still_serves(server)


def test_an_endless_answer_is_cut_at_the_cap_with_memory_bounded(abusive: tuple[Server, str]) -> None:
    server, _ = abusive
    footprint = Footprint(process_tree(server.process.pid))
    started = time.monotonic()
    status, code, message = error_of(server.client.post("/invocations?do=endless", content=b"1"))
    assert (status, code) == (502, "upstream_too_large") and "1 MiB limit" in message
    assert time.monotonic() - started < 2  # cut at the cap, not at the timeout
    assert footprint.growth() < 32 * MIB
    still_serves(server)


@pytest.mark.parametrize(
    ("what", "status", "code", "says"),
    [
        ("flood", 502, "upstream_unavailable", "header section over 64 KiB"),
        ("slow-head", 504, "upstream_timeout", "did not answer within 2 s"),
    ],
)
def test_an_answer_whose_head_never_ends_is_cut_off(
    abusive: tuple[Server, str], what: str, status: int, code: str, says: str
) -> None:
    server, _ = abusive
    started = time.monotonic()
    assert error_of(server.client.post(f"/invocations?do={what}", content=b"1"))[:2] == (status, code)
    assert time.monotonic() - started < 5
    still_serves(server)


def test_redirects_follow_rfc_9110(abusive: tuple[Server, str]) -> None:
    """307 and 308 keep the method and body; 301, 302 and 303 to a POST are a 502 that says why."""
    server, _ = abusive
    for kept in (307, 308):
        answer = server.client.post(f"/invocations?do=moved&to=/invocations&status={kept}", content=b"7,8")
        assert answer.status_code == 200 and answer.json()["body"] == "7,8"
    for refused in (301, 302, 303):
        answer = server.client.post(f"/invocations?do=moved&to=/elsewhere&status={refused}", content=b"7,8")
        status, code, message = error_of(answer)
        assert (status, code) == (502, "upstream_unavailable")
        assert f"with {refused}" in message and "to /elsewhere" in message and "307 or 308" in message
    looping = server.client.post("/invocations?do=moved&status=307", content=b"7,8")  # to itself
    assert looping.status_code == 502 and "more than 5 times" in looping.json()["error"]["message"]


def test_a_slow_upstream_is_a_504_and_ping_stays_fast(tmp_path: Path) -> None:
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/slow", "--upstream-cmd", fake("echo", port),
                   env={"SAGEHOST_TIMEOUT": "1"})  # fmt: skip
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(server.client.post, "/invocations", content=b"1")
            time.sleep(0.2)
            started = time.monotonic()
            assert server.client.get("/ping").status_code == 200
            assert time.monotonic() - started < 0.5
            answer = slow.result()
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "upstream_timeout"
    finally:
        server.stop()


def test_the_upstream_gets_its_own_scratch_dir(tmp_path: Path) -> None:
    port = free_port()
    scratch = tmp_path / "scorer-tmp"
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/x", "--upstream-cmd", fake("echo", port),
                   "--upstream-scratch", str(scratch), env={"JAVA_TOOL_OPTIONS": "-Xmx256m"})  # fmt: skip
    try:
        env = httpx.get(f"http://127.0.0.1:{port}/env").json()
        assert env == {
            "TMPDIR": str(scratch),
            "JAVA_TOOL_OPTIONS": f"-Xmx256m -Djava.io.tmpdir={scratch}",
            "cwd": str(scratch),
        }
    finally:
        server.stop()


def test_upstream_killed_mid_run_is_503_and_502_then_restarted(tmp_path: Path) -> None:
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/x", "--upstream-cmd", fake("echo", port),
                   "--upstream-health", "/health")  # fmt: skip
    try:
        os.kill(scorer_pid(server), signal.SIGKILL)
        deadline = time.monotonic() + 1.5
        statuses = set()
        while time.monotonic() < deadline:  # nothing hangs: every call is answered within its timeout
            statuses.add(server.client.get("/ping", timeout=2).status_code)
            answer = server.client.post("/invocations", content=b"1", timeout=5)
            statuses.add(answer.status_code)
            if {503, 502} <= statuses:
                break
            time.sleep(0.05)
        assert {503, 502} <= statuses
        wait_healthy(server, timeout=20)  # the keeper restarted it after its back-off
        assert server.client.post("/invocations", content=b"1").status_code == 200
        assert "restarting it" in server.log
    finally:
        assert server.stop() == 0


def test_an_upstream_that_cannot_be_kept_up_stops_the_proxy(tmp_path: Path) -> None:
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/x", "--upstream-cmd", "false", wait=False)
    assert server.process.wait(timeout=60) == 1
    assert "giving up" in server.log


def scorer_pid(server: Server) -> int:
    return int(next(line for line in server.log.splitlines() if "fake echo scorer" in line).rsplit("pid ", 1)[1])


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@pytest.mark.parametrize(
    ("flag", "env", "policy"),
    [
        ((), {}, os.SCHED_BATCH),
        (("--no-yield-cpu",), {}, os.SCHED_OTHER),
        ((), {"SAGEHOST_YIELD_CPU": "false"}, os.SCHED_OTHER),
    ],
)
def test_the_workers_yield_the_cpu_and_the_scoring_server_keeps_the_default(
    tmp_path: Path, flag: tuple[str, ...], env: dict[str, str], policy: int
) -> None:
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/x", "--upstream-cmd", fake("echo", port),
                   "--upstream-health", "/health", *flag, env=env)  # fmt: skip
    try:
        scorer = scorer_pid(server)
        workers = children_of(server.process.pid) - {parent_of(scorer)}  # the keeper is the scorer's parent
        assert len(workers) == 2
        assert {os.sched_getscheduler(pid) for pid in workers} == {policy}
        assert os.sched_getscheduler(scorer) == os.SCHED_OTHER
        assert os.sched_getscheduler(parent_of(scorer)) == os.SCHED_OTHER
        assert server.client.post("/invocations", content=b"1").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "is the port sagehost answers SageMaker on"),
        ({"SAGEMAKER_SAFE_PORT_RANGE": "20000-20100"}, "outside SAGEMAKER_SAFE_PORT_RANGE"),
    ],
)
def test_the_upstream_port_is_checked_before_anything_starts(tmp_path: Path, env: dict[str, str], message: str) -> None:
    port = free_port()
    upstream_port = port if not env else 20200
    process = subprocess.run(
        [str(VENV_BIN / "sagehost"), "proxy", "--upstream", f"http://127.0.0.1:{upstream_port}/x", "--port", str(port)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert process.returncode == 1 and message in process.stderr


# ---- adapters -------------------------------------------------------------------------------

RECORDS = [
    {"age": 30, "amount": 80.0, "gender": "M"},
    {"age": 60, "amount": 5.5, "gender": "F"},
    {"age": 45, "amount": 40.0, "gender": "M"},
]


def expected_p(record: dict[str, Any]) -> float:
    return fraud_probability(float(record["age"]), float(record["amount"]), str(record["gender"]))


def test_scr_adapter_takes_records_csv_with_a_header_and_headerless_csv(tmp_path: Path) -> None:
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/fraud", "--upstream-cmd", fake("scr", port),
                   "--adapter", "scr", "--upstream-columns", "age,amount,gender")  # fmt: skip
    try:
        one = server.client.post("/invocations", json=RECORDS[0]).json()
        assert one == {"P_fraud1": pytest.approx(expected_p(RECORDS[0])), "I_fraud": "1"}
        csv = "gender,age,amount\n" + "\n".join(f"{r['gender']},{r['age']},{r['amount']}" for r in RECORDS)
        rows = server.client.post("/invocations", content=csv, headers={"Content-Type": "text/csv"}).json()
        assert [row[0] for row in rows] == pytest.approx([expected_p(r) for r in RECORDS])
        bare = "\n".join(f"{r['age']},{r['amount']},{r['gender']}" for r in RECORDS)
        csv_answer = server.client.post(
            "/invocations", content=bare, headers={"Content-Type": "text/csv", "Accept": "text/csv"}
        )
        first = csv_answer.text.splitlines()[0].split(",")
        assert float(first[0]) == pytest.approx(expected_p(RECORDS[0])) and first[1] == "1"
        refused = server.client.post("/invocations", json={"age": 1, "colour": "red", "amount": 2})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "upstream_rejected"
    finally:
        server.stop()


def last_inputs(port: int) -> dict[str, Any]:
    """What the SCR-shaped scorer last received: each input's value, as sent."""
    return {i["name"]: i["value"] for i in httpx.get(f"http://127.0.0.1:{port}/last").json()["inputs"]}


def test_scr_adapter_sends_each_value_with_the_type_the_client_gave_it(tmp_path: Path) -> None:
    """A JSON string stays a string ("007" is a category, not 7.0), a JSON int an int; CSV cells
    are typed as --upstream-columns declares, and guessed only where it declares no type."""
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/fraud", "--upstream-cmd", fake("scr", port),
                   "--adapter", "scr", "--upstream-columns", "age:int,amount:float,gender,zip:str")  # fmt: skip
    try:
        sent = {"age": 30, "amount": 80.5, "gender": "M", "zip": "007"}
        assert server.client.post("/invocations", json=sent).status_code == 200
        assert last_inputs(port) == sent and isinstance(last_inputs(port)["age"], int)
        assert server.client.post("/invocations", json={**sent, "zip": "28007", "age": "30"}).status_code == 200
        assert last_inputs(port) == {**sent, "zip": "28007", "age": "30"}  # strings stay strings
        csv = {"Content-Type": "text/csv"}
        assert server.client.post("/invocations", content="30,80.5,M,007", headers=csv).status_code == 200
        assert last_inputs(port) == sent and isinstance(last_inputs(port)["age"], int)
        assert server.client.post("/invocations", content="zip,age,amount,gender\n28007,31,5,F", headers=csv).json()
        assert last_inputs(port) == {"zip": "28007", "age": 31, "amount": 5.0, "gender": "F"}
        wrong = server.client.post("/invocations", content="thirty,80.5,M,007", headers=csv)
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "schema_mismatch"
        assert "'age' is declared int" in wrong.json()["error"]["message"]
        # the same scorer behind a proxy with no types declared: CSV cells that read as numbers are guessed
        untyped = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/fraud", "--adapter", "scr",
                        "--upstream-columns", "age,amount,gender,zip")  # fmt: skip
        try:
            assert untyped.client.post("/invocations", content="30,80.5,M,007", headers=csv).status_code == 200
            assert last_inputs(port) == {"age": 30.0, "amount": 80.5, "gender": "M", "zip": 7.0}
            assert untyped.client.post("/invocations", json=sent).status_code == 200
            assert last_inputs(port) == sent  # JSON is never guessed at
        finally:
            untyped.stop()
    finally:
        server.stop()


def test_h2o_adapter_micro_batches_concurrent_requests(tmp_path: Path) -> None:
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/model/score", "--upstream-cmd",
                   fake("h2o", port), "--adapter", "h2o", env={"SAGEHOST_WORKERS": "1"})  # fmt: skip
    try:
        one = server.client.post("/invocations", json=RECORDS[1]).json()
        assert float(one["fraud.1"]) == pytest.approx(expected_p(RECORDS[1]))
        requests = [RECORDS[i % 3] for i in range(60)]

        def ask(record: dict[str, Any]) -> Any:
            return httpx.post(server.url + "/invocations", json=[record], timeout=30).json()[0]

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(ask, requests))
        assert [float(a["fraud.1"]) for a in answers] == pytest.approx([expected_p(r) for r in requests])
        stats = httpx.get(f"http://127.0.0.1:{port}/stats").json()
        assert stats["rows"] == 61
        assert stats["score"] < 61  # several requests' rows went in one upstream call
        typed = {"age": 30, "amount": 80.5, "gender": "M", "zip": "007", "member": True}
        assert server.client.post("/invocations", json=typed).status_code == 200
        # H2O takes text: each value's own text, "007" as sent, JSON's true as true
        assert httpx.get(f"http://127.0.0.1:{port}/last").json()["rows"] == [["30", "80.5", "M", "007", "true"]]
        csv = "age,amount,gender,zip\n30,80.50,M,007"
        assert server.client.post("/invocations", content=csv, headers={"Content-Type": "text/csv"}).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/last").json()["rows"] == [["30", "80.50", "M", "007"]]
        big = "age,amount,gender,zip\n" + "\n".join(f"{r['age']},{r['amount']},{r['gender']},0{i}" for i, r in
                                                  enumerate(RECORDS * 200))  # fmt: skip
        assert len(big) > 8 * 1024  # decoded off the event loop
        answers = server.client.post("/invocations", content=big, headers={"Content-Type": "text/csv"}).json()
        assert [float(a[1]) for a in answers] == pytest.approx([expected_p(r) for r in RECORDS * 200])
        assert httpx.get(f"http://127.0.0.1:{port}/last").json()["rows"][-1][-1] == "0599"
    finally:
        server.stop()


def test_request_and_response_hooks_translate_any_other_api(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_api.py").write_text(
        "import json\n\n"
        "def to_upstream(body, content_type, accept):\n"
        "    return json.dumps({'wrapped': body.decode()}).encode(), 'application/json'\n\n"
        "def from_upstream(status, body, content_type, accept):\n"
        "    return json.loads(body)['body'].upper().encode(), 'text/plain'\n"
    )
    port = free_port()
    server = proxy(tmp_path, "--upstream", f"http://127.0.0.1:{port}/x", "--upstream-cmd", fake("echo", port),
                   "--adapter-request", "my_api:to_upstream", "--adapter-response", "my_api:from_upstream",
                   env={"SAGEHOST_CODE_DIR": str(code)})  # fmt: skip
    try:
        answer = server.client.post("/invocations", content=b"abc", headers={"Content-Type": "text/csv"})
        assert answer.text == '{"WRAPPED": "ABC"}' and answer.headers["content-type"] == "text/plain"
    finally:
        server.stop()


# ---- a real third-party upstream: MLflow's scoring server ------------------------------------


@pytest.mark.slow
def test_mlflow_scoring_server_proxied_transparently(
    mlflow_model: tuple[Path, np.ndarray[Any, Any]], tmp_path: Path
) -> None:
    model, rows = mlflow_model
    port = free_port()
    command = f"{VENV_BIN / 'mlflow'} models serve -m {model} -h 127.0.0.1 -p {port} --env-manager local -w 1"
    env = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}"}  # mlflow execs a bare `uvicorn`
    server = start_proxy(tmp_path, env, "--upstream", f"http://127.0.0.1:{port}/invocations", "--upstream-cmd",
                         command, "--upstream-health", "/ping", wait=False)  # fmt: skip
    try:
        wait_healthy(server, timeout=90)
        body = {"dataframe_split": {"data": rows.tolist()}}
        direct = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
        proxied = server.client.post("/invocations", json=body)
        assert proxied.status_code == direct.status_code == 200
        assert proxied.json() == direct.json()
        csv = "\n".join(",".join(map(str, row)) for row in rows)
        with httpx.Client() as direct_client:
            both = [
                client.post(url, content=csv, headers={"Content-Type": "text/csv"})
                for client, url in (
                    (server.client, "/invocations"),
                    (direct_client, f"http://127.0.0.1:{port}/invocations"),
                )
            ]
        assert both[0].json() == both[1].json()
        bad = server.client.post("/invocations", json={"nonsense": 1})
        assert bad.status_code == 400  # MLflow's own status and body come back
        assert bad.json() == httpx.post(f"http://127.0.0.1:{port}/invocations", json={"nonsense": 1}).json()
        assert "[upstream]" in server.log  # its output, prefixed
    finally:
        assert server.stop() == 0


def test_an_upstream_query_is_kept_and_a_failing_hook_is_a_named_500(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "broken.py").write_text("def to_upstream(body, content_type, accept):\n    raise ValueError('no')\n")
    port = free_port()
    upstream = f"http://127.0.0.1:{port}/x?key=1"
    plain = proxy(tmp_path, "--upstream", upstream, "--upstream-cmd", fake("echo", port))
    try:
        answer = plain.client.post("/invocations?variant=b", content=b"1", headers={"Content-Type": "text/csv"})
        assert answer.json()["path"] == "/x?key=1&variant=b"
        # a second proxy on the same upstream (the first one keeps it running), with a broken hook
        hooked = proxy(tmp_path, "--upstream", upstream, "--adapter-request", "broken:to_upstream",
                       env={"SAGEHOST_CODE_DIR": str(code)})  # fmt: skip
        try:
            failed = hooked.client.post("/invocations", content=b"1")
            assert failed.status_code == 500
            assert "--adapter-request hook raised ValueError" in failed.json()["error"]["message"]
        finally:
            hooked.stop()
    finally:
        plain.stop()


def test_an_images_serve_runs_the_proxy_when_sagehost_upstream_is_set(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "SAGEHOST_UPSTREAM": f"http://127.0.0.1:{port}/invocations",
        "SAGEHOST_UPSTREAM_CMD": fake("echo", port),
        "SAGEHOST_UPSTREAM_HEALTH": "/health",
    }
    server = start_sagehost(["serve"], tmp_path, env)
    try:
        answer = server.client.post("/invocations", content=b"7", headers={"Content-Type": "text/csv"})
        assert answer.json()["body"] == "7"
    finally:
        assert server.stop() == 0


def _exchange(url: str, raw: bytes, answers: int = 1) -> list[bytes]:
    """Send raw bytes on one connection; the raw answers, split at each head."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        while received.count(b"HTTP/1.1 ") - received.count(b"HTTP/1.1 100 ") < answers or not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return [b"HTTP/1.1 " + part for part in received.split(b"HTTP/1.1 ")[1:]]


def _complete(received: bytes) -> bool:
    head, _, body = received.rpartition(b"HTTP/1.1 ")[2].partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    return len(body) >= length


def test_the_proxys_http_server_speaks_http_1_1(echo: tuple[Server, int]) -> None:
    """The proxy's workers run sagehost.http.server, not uvicorn: pipelining, chunked bodies, 100-continue,
    HTTP/1.0 keep-alive, malformed requests and oversized bodies, on raw sockets."""
    server, _ = echo
    post = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: %d\r\n\r\n%s"
    pipelined = _exchange(server.url, post % (3, b"1,2") + post % (3, b"3,4"), answers=2)
    assert [json.loads(a.partition(b"\r\n\r\n")[2])["body"] for a in pipelined] == ["1,2", "3,4"]  # in order

    chunked = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n1,2\r\n2\r\n,3\r\n0\r\n\r\n"
    )
    assert json.loads(_exchange(server.url, chunked)[0].partition(b"\r\n\r\n")[2])["body"] == "1,2,3"

    expect = b"POST /invocations HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n7"
    continued = _exchange(server.url, expect)
    assert continued[0].startswith(b"HTTP/1.1 100 Continue") and continued[1].startswith(b"HTTP/1.1 200 OK")

    old = b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    both = _exchange(server.url, old + old, answers=2)
    assert len(both) == 2 and all(b"connection: keep-alive" in a for a in both)

    bad = _exchange(server.url, b"NONSENSE\r\n\r\n")
    assert bad[0].startswith(b"HTTP/1.1 400") and b"bad_request" in bad[0]

    huge = server.client.post("/invocations", content=b"1" * (7 * 1024 * 1024))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    assert server.client.get("/nope").status_code == 404
    assert server.client.get("/invocations").status_code == 405


# ---- an upstream with several worker processes on one socket ---------------------------------


def scorer_pids(server: Server) -> list[int]:
    return [int(line.rsplit("pid ", 1)[1]) for line in server.log.splitlines() if "fake workers scorer" in line]


def served_by(server: Server, requests: int) -> set[int]:
    """Which upstream processes answered `requests` requests at once (each held long enough that
    they overlap, so the proxy's pool holds as many connections and reuses them all)."""

    def ask(_: int) -> int:
        return int(httpx.post(server.url + "/invocations", content=b"1", timeout=10).json()["pid"])

    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        return set(pool.map(ask, range(requests)))


@pytest.mark.parametrize(
    ("flag", "env", "spreads"),
    [
        ((), {}, True),  # replaced once 1 s old
        (("--upstream-max-connection-age", "0"), {}, False),
        ((), {"SAGEHOST_UPSTREAM_MAX_CONNECTION_AGE": "0"}, False),
    ],
)
def test_a_pool_filled_while_one_upstream_worker_was_stopped_spreads_again(
    tmp_path: Path, flag: tuple[str, ...], env: dict[str, str], spreads: bool
) -> None:
    """Each connection stays with the upstream process that accepted it: replacing pooled
    connections as they age is what lets a worker that was busy when the pool filled get work."""
    port = free_port()
    upstream = f"http://127.0.0.1:{port}/pid?hold=0.1"
    server = proxy(tmp_path, "--upstream", upstream, "--upstream-cmd", fake("workers", port), *flag,
                   env={"SAGEHOST_WORKERS": "1", **env})  # fmt: skip
    first, second = 0, 0
    try:
        deadline = time.monotonic() + 10
        while len(pids := scorer_pids(server)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first, second = pids
        os.kill(second, signal.SIGSTOP)
        assert set().union(*(served_by(server, 8) for _ in range(3))) == {first}  # the pool, all in `first`
        os.kill(second, signal.SIGCONT)
        seen: set[int] = set()
        deadline = time.monotonic() + 3
        while second not in seen and time.monotonic() < deadline:
            seen |= served_by(server, 8)
            time.sleep(0.05)
        assert (second in seen) is spreads
    finally:
        if second:
            os.kill(second, signal.SIGCONT)
        assert server.stop() == 0
