"""Our own outbound calls off the hot path — `verify`, `invoke`, the local runtime stand-in —
through one well-kept client, httpx, and the one place its exceptions become ours.

Every call has a deadline and a cap on the answer it reads: `verify` talks to servers it does not
trust, and one that streams a body without end, or a byte a minute, must cost a bounded amount
of memory and time. Answers are read as sent (`Accept-Encoding: identity`, never decompressed
here), so the cap counts the bytes on the wire and a small gzip bomb cannot grow past it.
Redirects are not followed: SageMaker does not follow them either.

Translation (httpx -> sagehost.errors), here and nowhere else:
- no answer within the deadline: UpstreamTimeout;
- an answer over the caller's cap (the connection is dropped): UpstreamTooLarge;
- cannot connect, a connection broken, a malformed answer, a bad URL: UpstreamUnavailable.
Each message names the URL and says what happened, for a person to act on.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx

from sagehost.errors import SagehostError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable

_IDENTITY = {"Accept-Encoding": "identity"}
_Client = TypeVar("_Client", httpx.Client, httpx.AsyncClient)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    seconds: float
    complete: bool = True
    """False when the body went past the cap and `send(..., partial=True)` kept its first part."""

    @property
    def content_type(self) -> str:
        return str(self.headers.get("content-type", ""))

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def send(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float,
    max_body: int,
    partial: bool = False,
) -> Answer:
    """One request, its answer read whole up to `max_body` bytes, all within about `timeout` s.
    Past `max_body` the answer is refused (UpstreamTooLarge), or with `partial` its first
    `max_body` bytes are kept and `complete` is False: for a caller that judges the status."""
    started = time.monotonic()
    try:
        with (
            _bare(httpx.Client(timeout=timeout, verify=_tls(), follow_redirects=False)) as client,
            client.stream(method, url, content=body, headers={**_IDENTITY, **(headers or {})}) as response,
        ):
            data, complete = _capped(response.iter_raw(), url, max_body, started + timeout, timeout)
            if not complete and not partial:
                raise _too_large(url, max_body)
    except httpx.HTTPError as exc:
        raise _translated(exc, url, timeout) from None
    except httpx.InvalidURL as exc:
        raise UpstreamUnavailable(f"{url} is not a URL sagehost can call: {exc}.") from None
    return Answer(response.status_code, response.headers, data, time.monotonic() - started, complete)


async def send_async(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float,
    max_body: int,
) -> Answer:
    """`send` on a pooled async client: the whole call, answer included, within `timeout` s."""
    started = time.monotonic()
    try:
        sent = {**_IDENTITY, **(headers or {})}
        request = client.build_request(method, url, content=body, headers=sent, timeout=timeout)
        return await asyncio.wait_for(_fetch(client, request, max_body, started), timeout)
    except asyncio.TimeoutError:
        raise UpstreamTimeout(_no_answer_in_time(url, timeout)) from None
    except httpx.HTTPError as exc:
        raise _translated(exc, url, timeout) from None
    except httpx.InvalidURL as exc:
        raise UpstreamUnavailable(f"{url} is not a URL sagehost can call: {exc}.") from None


def async_client(max_connections: int) -> httpx.AsyncClient:
    """A bounded pool for one upstream we trust as far as its address: no proxies from the
    environment (the upstream is on this machine), no redirects."""
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        trust_env=False,
        follow_redirects=False,
        verify=_tls(),
    )
    return _bare(client)


def _bare(client: _Client) -> _Client:
    """Without httpx's default `Accept: */*`: a request sent with no Accept arrives with none,
    which is what `verify` checks and what a relay must pass on."""
    del client.headers["Accept"]
    return client


def _translated(exc: httpx.HTTPError, url: str, timeout: float) -> SagehostError:
    """The one boundary where an httpx exception becomes ours."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(_no_answer_in_time(url, timeout))
    return UpstreamUnavailable(f"No answer from {url}: {_reason(exc).rstrip('.')}.")


def _reason(exc: BaseException) -> str:
    """The system's word for a failed connection ("Connection refused") where there is one under
    httpx's own ("All connection attempts failed"), else httpx's."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


async def _fetch(client: httpx.AsyncClient, request: httpx.Request, max_body: int, started: float) -> Answer:
    response = await client.send(request, stream=True)
    try:
        data = await _capped_async(response.aiter_raw(), str(request.url), max_body)
    finally:
        await response.aclose()
    return Answer(response.status_code, response.headers, data, time.monotonic() - started)


def _capped(chunks: Iterator[bytes], url: str, max_body: int, deadline: float, timeout: float) -> tuple[bytes, bool]:
    """The body's first `max_body` bytes, and whether that was all of it. httpx's timeout bounds
    each read, and the deadline the whole: a server that sends a byte just inside each read
    timeout is cut off here."""
    kept: list[bytes] = []
    size = 0
    for chunk in chunks:
        if size + len(chunk) > max_body:
            kept.append(chunk[: max_body - size])
            return b"".join(kept), False
        size += len(chunk)
        kept.append(chunk)
        if time.monotonic() > deadline:
            raise UpstreamTimeout(_no_answer_in_time(url, timeout))
    return b"".join(kept), True


async def _capped_async(chunks: AsyncIterator[bytes], url: str, max_body: int) -> bytes:
    kept: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_body:
            raise _too_large(url, max_body)
        kept.append(chunk)
    return b"".join(kept)


def _too_large(url: str, max_body: int) -> UpstreamTooLarge:
    return UpstreamTooLarge(f"The answer from {url} is over {max_body} bytes; sagehost stopped reading it there.")


def _no_answer_in_time(url: str, timeout: float) -> str:
    return f"No answer from {url} within {timeout:g} s."


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client (building one loads the CA store, tens of ms); the
    system's CA store, as urllib used before."""
    return ssl.create_default_context()
