"""A local stand-in for the SageMaker runtime in front of the container.

Callers reach a real endpoint only through InvokeEndpoint, which enforces the payload limit and
the invocation timeout and turns any container error into a `ModelError` (HTTP 424) carrying the
container's status and body. This gateway does the same, so a local run fails the way the
endpoint would. It answers `POST /invocations` and the runtime API's own path,
`POST /endpoints/<name>/invocations`, so boto3 pointed at it (`endpoint_url=`) works unchanged.
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from sagehost.errors import StartupError
from sagehost.local.modes import Limits

_INVOKE_PATH = re.compile(r"^/(?:endpoints/[^/]+/)?invocations$")
_PASSED_UP = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes", "x-amzn-sagemaker-inference-id")
_CONTAINER = "primary"  # the name SageMaker gives a single-container endpoint's container
# GET paths SageMaker calls, with its timeouts: /ping's 2 s; Batch Transform's /execution-parameters.
_PLATFORM_GETS = {"/ping": 2.0, "/execution-parameters": 10.0}


class Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, limits: Limits) -> None:
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise StartupError(f"Cannot listen on 127.0.0.1:{port} ({exc.strerror}): pick another --port.") from None
        self.container = ("127.0.0.1", 8080)
        self.limits = limits

    def point_at(self, container_url: str) -> None:
        parts = urlsplit(container_url)
        self.container = (parts.hostname or "127.0.0.1", parts.port or 8080)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: Gateway
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the container's own log says what happened."""

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path in _PLATFORM_GETS:  # what SageMaker itself asks the container, passed through for a look
            self._relay("GET", path, b"", _PLATFORM_GETS[path])
        else:
            self._answer(404, {"message": f"No route {self.path}: use POST /invocations."})

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        if not _INVOKE_PATH.match(path):
            self._answer(404, {"message": f"No route {path}: use POST /invocations."})
            return
        size = int(self.headers.get("Content-Length") or 0)
        if size > self.server.limits.payload_bytes:
            self.close_connection = True  # the body stays unread
            self._answer(413, {"message": f"HTTP content length exceeded {self.server.limits.payload_bytes} bytes."})
            return
        body = self.rfile.read(size)
        self._relay("POST", "/invocations" + (f"?{query}" if query else ""), body, self.server.limits.timeout_s)

    def _relay(self, method: str, path: str, body: bytes, timeout: float) -> None:
        host, port = self.server.container
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {k: v for k, v in self.headers.items() if k.lower() in _PASSED_UP}
        try:
            connection.request(method, path, body=body if method == "POST" else None, headers=headers)
            response = connection.getresponse()
            answer = response.read()
        except TimeoutError:
            self._model_error(0, f"Your invocation timed out while waiting for a response from container {_CONTAINER}.")
            return
        except OSError as exc:
            self._model_error(0, f"The container {_CONTAINER} could not be reached: {exc}.")
            return
        finally:
            connection.close()
        if response.status >= 400 and path.startswith("/invocations"):
            self._model_error(response.status, answer.decode("utf-8", errors="replace"))
            return
        if len(answer) > self.server.limits.payload_bytes:
            self._model_error(0, f"The response of {len(answer)} bytes is over the payload limit.")
            return
        passed = [
            (k, v) for k, v in response.getheaders() if k.lower() == "content-type" or k.lower().startswith("x-amzn-")
        ]
        self._send(response.status, answer, [*passed, ("x-Amzn-Invoked-Production-Variant", "AllTraffic")])

    def _model_error(self, status: int, message: str) -> None:
        """InvokeEndpoint's ModelError, as boto3 receives it."""
        kind = "client" if 400 <= status < 500 else "server"
        text = f'Received {kind} error ({status}) from {_CONTAINER} with message "{message}". See the container log.'
        print(f"[local] ModelError: {text}", file=sys.stderr, flush=True)
        error = {
            "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
            "Message": text,
            "OriginalStatusCode": status,
            "OriginalMessage": message,
            "LogStreamArn": "local",
        }
        self._answer(424, error, [("x-amzn-ErrorType", "ModelError:")])

    def _answer(self, status: int, payload: dict[str, object], headers: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps(payload).encode()
        self._send(status, body, [("Content-Type", "application/json"), *(headers or [])])

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
