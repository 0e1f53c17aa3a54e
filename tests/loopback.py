"""A scripted HTTP server on a free loopback port, in the test's own event loop: the shared part of
the upstreams and containers that in-process tests script (tests/test_http_client.py,
tests/test_local_transform.py). A subclass says what one connection gets in `handle`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, TypeVar

Served = TypeVar("Served", bound="LoopbackServer")


@dataclass
class LoopbackServer:
    _server: asyncio.Server | None = field(default=None, kw_only=True)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set, kw_only=True)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self: Served) -> Served:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.handle(reader, writer)
        finally:
            self._handlers.discard(task)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection; it is closed by the caller's script or when this returns."""
        raise NotImplementedError
