"""A transparent proxy's client connections: POST /invocations straight to the scoring server
and its answer straight back, in as few steps as Python allows.

Beside a CPU-bound scoring server on the same cores, a proxy's cost is less its instructions than
how much it touches per request: after the scoring server has run, every function, object and
module the proxy reaches is a cache miss. Through the App, the proxy service and back, a request
touched about forty functions in six modules, and the proxy kept a few points less of MLflow's
direct requests/s than a featureless relay or nginx (bench/README.md, issue 4). Here a request
goes from the parsed request to the pooled client and back into the connection, with nothing
between them but the client's call. The rules are the same ones, shared: hop-by-hop headers
dropped, SageMaker's headers passed back, custom attributes echoed (sagehost.answers), errors as
the App writes them. Anything else (/ping, other routes, bodies over the limit, a proxy with an
adapter or hooks) goes to the App as before.
"""

from __future__ import annotations

import logging

from sagehost.answers import error_answer, final_headers, reply_headers
from sagehost.errors import InternalError, SagehostError
from sagehost.http.client import Response
from sagehost.http.server import Connection, HttpServer, Request
from sagehost.proxy.service import ProxyService, forwarded, passed_back

log = logging.getLogger("sagehost.proxy")
_FAILED = "sagehost failed unexpectedly; the server log has the details."


class RelayConnection(Connection):
    def __init__(self, server: HttpServer) -> None:
        super().__init__(server)
        service = server.app.service  # loaded before the server accepts connections
        self._service = service if isinstance(service, ProxyService) and service.relayable else None
        self._attributes: bytes | None = None
        self._answered = self._answer_with  # bound once: the client calls it for every request

    def _offer(self, request: Request) -> bool:
        service = self._service
        if service is None or request.method != "POST" or len(request.body) > self._server.body_limit:
            return False
        path, _, query = request.url.partition(b"?")
        if path != b"/invocations":
            return False
        headers, self._attributes = forwarded(request.headers)
        url = service.upstream_url(query)
        service.client.send("POST", url, headers, request.body, timeout=service.timeout_s, done=self._answered)
        return True

    def _answer_with(self, outcome: Response | SagehostError) -> None:
        """The scoring server's answer, or the error, as the contract's answer to the request in hand."""
        request = self._answering
        assert request is not None
        try:
            if isinstance(outcome, SagehostError):
                status, headers, body = error_answer(outcome)
            else:
                status, body = outcome.status, outcome.body
                content_type, passed = passed_back(outcome.headers)
                headers = reply_headers(content_type, passed, self._attributes)
        except Exception:  # a bug in us: answered, logged, and the worker lives on
            log.exception("Relaying the scoring server's answer failed")
            status, headers, body = error_answer(InternalError(_FAILED))
        self._respond(request, status, final_headers(headers, body, request.version, request.headers), body)
