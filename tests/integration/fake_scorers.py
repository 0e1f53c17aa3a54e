"""Scoring servers shaped like the vendors' APIs, written from their public descriptions (the
vendors' binaries are not available here), to test the proxy's adapters against.

    python fake_scorers.py KIND PORT      KIND: scr | h2o | echo | workers

- scr: SAS Container Runtime — POST /<module> {"inputs": [{"name", "value"}, …]} ->
  {"version": 1, "metadata": {…}, "data": {"P_fraud1": p, "I_fraud": "0"|"1"}}.
- h2o: H2O's REST scorer — POST /model/score {"fields": […], "rows": [[…]]} ->
  {"id": …, "fields": ["fraud.0", "fraud.1"], "score": [[…]]}; values are text.
- echo: answers what it got.
- workers: echo in two processes on one listening socket, as uvicorn's and gunicorn's workers
  run; POST /pid answers which process served it (after `?hold=` seconds).
All of them also serve GET /health, GET /stats (calls so far), GET /last (the last scoring
  request's inputs or rows, as received), GET /env (TMPDIR, JAVA_TOOL_OPTIONS, cwd), POST /slow
  (sleeps 3 s), POST /old (307 to the path in ?to=), and POST /abuse?do=… — what a broken or
  hostile upstream does:
  - close-second: answers the first request on a connection; reads the second and closes
  - endless: a chunked body without end      - flood: header lines without end
  - slow-head: its head, a byte every 0.2 s
  - moved: answers ?status= with Location ?to= (or its own URL)
"""

from __future__ import annotations

import http.server
import json
import math
import os
import sys
import threading
import time
import urllib.parse
from typing import Any

CALLS = {"score": 0, "rows": 0, "abuse": 0}
LAST: dict[str, Any] = {}
LOCK = threading.Lock()
ABUSE_FOR_S = 30  # an abusive answer stops by itself, whoever is (not) reading it


def fraud_probability(age: float, amount: float, gender: str) -> float:
    return 1 / (1 + math.exp(-(0.04 * amount - 0.02 * age + (0.5 if gender == "M" else -0.5))))


class Handler(http.server.BaseHTTPRequestHandler):
    """One instance per connection."""

    protocol_version = "HTTP/1.1"
    kind = "echo"
    served = 0  # requests answered on this connection

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "up"})
        elif self.path == "/stats":
            self._send(200, CALLS)
        elif self.path == "/last":
            self._send(200, LAST)
        elif self.path == "/env":
            env = {k: os.environ.get(k) for k in ("TMPDIR", "JAVA_TOOL_OPTIONS")}
            self._send(200, {**env, "cwd": os.getcwd()})
        else:
            self._send(404, {"message": "no such path"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/pid":
            time.sleep(float(urllib.parse.parse_qs(parts.query).get("hold", ["0"])[0]))
            self._send(200, {"pid": os.getpid()})
        elif parts.path == "/slow":
            time.sleep(3)
            self._send(200, {"late": True})
        elif parts.path == "/abuse":
            self._abuse(urllib.parse.parse_qs(parts.query))
        elif parts.path == "/old":
            target = urllib.parse.parse_qs(parts.query)["to"][0]
            self.send_response(307)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.kind == "scr":
            self._scr(body)
        elif self.kind == "h2o":
            self._h2o(body)
        else:
            answer = {"body": body.decode(), "content_type": self.headers.get("Content-Type"), "path": self.path}
            answer["attributes"] = self.headers.get("X-Amzn-SageMaker-Custom-Attributes")
            quiet = answer["attributes"] == "quiet=1"  # a server that sends no custom attributes back
            self._send(200, answer, {} if quiet else {"X-Amzn-SageMaker-Custom-Attributes": "echoed=1"})

    def _scr(self, body: bytes) -> None:
        LAST["inputs"] = json.loads(body)["inputs"]
        inputs = {i["name"]: i["value"] for i in LAST["inputs"]}
        if set(inputs) - {"zip"} != {"age", "amount", "gender"}:  # zip: optional, a category
            self._send(400, {"message": f"unknown inputs {sorted(inputs)}"})
            return
        p = fraud_probability(float(inputs["age"]), float(inputs["amount"]), str(inputs["gender"]))
        self._count(1)
        metadata = {"module_id": "fraud", "step_id": "score", "elapsed_nanos": 1000}
        self._send(200, {"version": 1, "metadata": metadata, "data": {"P_fraud1": p, "I_fraud": str(int(p > 0.5))}})

    def _h2o(self, body: bytes) -> None:
        request = json.loads(body)
        fields, rows = request["fields"], request["rows"]
        LAST["rows"] = rows
        self._count(len(rows))
        score = []
        for row in rows:
            record = dict(zip(fields, row, strict=True))
            p = fraud_probability(float(record["age"]), float(record["amount"]), record["gender"])
            score.append([str(1 - p), str(p)])
        self._send(200, {"id": "fake-model", "fields": ["fraud.0", "fraud.1"], "score": score})

    def _abuse(self, query: dict[str, list[str]]) -> None:
        with LOCK:
            CALLS["abuse"] += 1
        what = query["do"][0]
        if what == "close-second" and self.served:
            self.close_connection = True  # read, never answered
            return
        if what == "close-second":
            self._send(200, {"served": self.served})
            return
        if what == "moved":  # to ?to=, or to itself without one
            location = query["to"][0] if "to" in query else self.path
            self._send(int(query["status"][0]), {"moved": location}, {"Location": location})
            return
        self.close_connection = True
        head = b"HTTP/1.1 200 OK\r\n"
        lines = {
            "endless": (head + b"Transfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"x" * 0x10000 + b"\r\n", 0.0),
            "flood": (head, b"X-Flood: " + b"a" * 1000 + b"\r\n", 0.0),
            "slow-head": (head, b"X", 0.2),
        }
        first, again, pause = lines[what]
        deadline = time.monotonic() + ABUSE_FOR_S
        try:
            self.wfile.write(first)
            while time.monotonic() < deadline:
                self.wfile.write(again)
                time.sleep(pause)
        except OSError:
            pass  # the proxy dropped the connection: what it should do

    def _count(self, rows: int) -> None:
        with LOCK:
            CALLS["score"] += 1
            CALLS["rows"] += rows

    def _send(self, status: int, answer: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.served += 1

    def log_message(self, format: str, *args: Any) -> None:
        return None


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    Handler.kind = kind
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if kind == "workers":
        os.fork()  # both processes serve the one socket; the keeper stops their process group
    # one write per line: the two processes of `workers` share the pipe, and print() may write
    # the text and its newline apart, so their lines would interleave
    os.write(sys.stdout.fileno(), f"fake {kind} scorer on {port}, pid {os.getpid()}\n".encode())
    server.serve_forever()


if __name__ == "__main__":
    main()
