"""`sagehost serve` as it ran until issue 14: the same process model, model loading, warm-up,
workers and micro-batching, with each worker's HTTP server uvicorn (httptools + uvloop) instead
of sagehost.http.server. bench/run.py measures the two side by side, so the server switch is
measured in one run.

    SAGEHOST_MODEL_DIR=... SAGEHOST_PORT=... SAGEHOST_WORKERS=2 python bench/uvicorn_app.py

Only `sagehost.server.run_app`, the function that runs one worker's server on the shared socket,
is swapped, for the uvicorn configuration serve used before (git show f9d6191^:src/sagehost/server.py):
binding, preloading before the fork, the supervisor and worker replacement stay sagehost's, so
the comparison follows them as they change.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from types import FrameType

from sagehost.config import Settings, thread_limits

# As `sagehost serve` does (cli.py): numeric libraries' thread pools sized for the workers,
# before numpy is first imported.
SETTINGS = Settings.from_environ(os.environ)
os.environ.update(thread_limits(SETTINGS))

import uvicorn  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402

from sagehost import contract, server  # noqa: E402
from sagehost.app import App, ServiceFactory  # noqa: E402
from sagehost.predictor import MODEL_THREAD  # noqa: E402


class KeepAliveHttpTools(HttpToolsProtocol):
    """httptools, keeping HTTP/1.0 connections alive when the client asks (`ab -k` does), as
    serve's uvicorn did: stock uvicorn closes every HTTP/1.0 connection."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.parser.get_http_version() == "1.0" and self.parser.should_keep_alive() and self.cycle:
            self.cycle.keep_alive = True


def run_app(sock: socket.socket, settings: Settings, load_service: ServiceFactory, connection: object = None) -> int:
    """uvicorn serving the app on the shared socket until SIGTERM; `connection` (a proxy's
    relay) has no uvicorn counterpart and is not used by serve."""
    app = App(settings, load_service)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=KeepAliveHttpTools,
        lifespan="on",
        access_log=False,
        log_config=None,
        proxy_headers=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=int(contract.SHUTDOWN_GRACE_S),
        backlog=2048,
    )
    # uvicorn re-raises the SIGTERM it caught once it has drained; a no-op handler underneath
    # turns that into a clean exit 0.
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)
    uvicorn.Server(config).run(sockets=[sock])
    MODEL_THREAD.shutdown()
    return server.STARTUP_FAILED if app.failed else 0


def _ignore(signum: int, frame: FrameType | None) -> None:
    return None


def main() -> int:
    logging.basicConfig(level=SETTINGS.log_level, stream=sys.stderr, force=True)
    server.run_app = run_app  # type: ignore[assignment]  # the one thing measured: the worker's HTTP server
    return server.serve(SETTINGS)


if __name__ == "__main__":
    sys.exit(main())
