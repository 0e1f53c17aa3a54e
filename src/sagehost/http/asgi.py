"""Reading an ASGI request's body within a limit, for sagehost's ASGI apps (the App, the local
runtime stand-in).

sagehost's own server refuses a body over the limit before the app sees it; under any other ASGI
server (httpx's ASGI transport in the tests, say) the app must refuse it itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_DRAIN_LIMIT = 64 * 1024 * 1024


async def read_body(headers: Iterable[tuple[bytes, bytes]], receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when it is over `limit`: by its declared length (unread), or, for a
    chunked body with no length, once it passes the limit. A refused body is read and dropped up
    to a bound, so the refusal reaches the client: closing with unread data makes the kernel reset
    the connection, and the client sees a reset instead of the answer."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            await _drain(receive)
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            if more:
                await _drain(receive)
            return None
        chunks.append(chunk)
        if not more:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drain(receive: Receive) -> None:
    dropped = 0
    while dropped < _DRAIN_LIMIT:
        message = await receive()
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
