"""Is the upstream answering? Cached for a short interval and never piled up: however many
/ping requests arrive, at most one check is in flight and each reuses the last answer while it
is fresh. SageMaker pings every few seconds with a 2 s timeout; a check takes milliseconds."""

from __future__ import annotations

import asyncio
import time

from sagehost.errors import SagehostError
from sagehost.http.client import Client, Origin

_CHECK_TIMEOUT_S = 1.5  # inside SageMaker's 2 s ping timeout


class UpstreamHealth:
    def __init__(self, client: Client, upstream: str, health_path: str | None, fresh_s: float = 0.5) -> None:
        self._client = client
        self._origin = Origin.of(upstream)
        self._health_url = (
            None if health_path is None else f"http://{self._origin.host}:{self._origin.port}{health_path}"
        )
        self._fresh_s = fresh_s
        self._checked_at = -1e9
        self._healthy = False
        self._in_flight: asyncio.Task[bool] | None = None

    async def healthy(self) -> bool:
        if time.monotonic() - self._checked_at < self._fresh_s:
            return self._healthy
        if self._in_flight is None:
            self._in_flight = asyncio.ensure_future(self._check())
        task = self._in_flight
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._in_flight is task:
                self._in_flight = None

    async def _check(self) -> bool:
        try:
            self._healthy = await asyncio.wait_for(self._probe(), _CHECK_TIMEOUT_S)
        except (OSError, TimeoutError, SagehostError):
            self._healthy = False
        self._checked_at = time.monotonic()
        return self._healthy

    async def _probe(self) -> bool:
        if self._health_url is None:  # no health endpoint: accepting connections is the check
            _, writer = await asyncio.open_connection(self._origin.host, self._origin.port)
            writer.close()
            return True
        response = await self._client.request("GET", self._health_url, [], b"", _CHECK_TIMEOUT_S)
        return 200 <= response.status < 300
