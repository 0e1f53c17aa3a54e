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
All of them also serve GET /health, GET /stats (calls so far), GET /env
  (TMPDIR, JAVA_TOOL_OPTIONS, cwd), POST /slow (sleeps 3 s) and POST /old (307 to the path in
  ?to=).
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

CALLS = {"score": 0, "rows": 0}
LOCK = threading.Lock()


def fraud_probability(age: float, amount: float, gender: str) -> float:
    return 1 / (1 + math.exp(-(0.04 * amount - 0.02 * age + (0.5 if gender == "M" else -0.5))))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    kind = "echo"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "up"})
        elif self.path == "/stats":
            self._send(200, CALLS)
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
        inputs = {i["name"]: i["value"] for i in json.loads(body)["inputs"]}
        if set(inputs) != {"age", "amount", "gender"}:
            self._send(400, {"message": f"unknown inputs {sorted(inputs)}"})
            return
        p = fraud_probability(float(inputs["age"]), float(inputs["amount"]), str(inputs["gender"]))
        self._count(1)
        metadata = {"module_id": "fraud", "step_id": "score", "elapsed_nanos": 1000}
        self._send(200, {"version": 1, "metadata": metadata, "data": {"P_fraud1": p, "I_fraud": str(int(p > 0.5))}})

    def _h2o(self, body: bytes) -> None:
        request = json.loads(body)
        fields, rows = request["fields"], request["rows"]
        self._count(len(rows))
        score = []
        for row in rows:
            record = dict(zip(fields, row, strict=True))
            p = fraud_probability(float(record["age"]), float(record["amount"]), record["gender"])
            score.append([str(1 - p), str(p)])
        self._send(200, {"id": "fake-model", "fields": ["fraud.0", "fraud.1"], "score": score})

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

    def log_message(self, format: str, *args: Any) -> None:
        return None


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    Handler.kind = kind
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if kind == "workers":
        os.fork()  # both processes serve the one socket; the keeper stops their process group
    print(f"fake {kind} scorer on {port}, pid {os.getpid()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
