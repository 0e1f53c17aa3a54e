"""What one HTTP connection may cost us: bytes of head and body, and how long each may take.

The defaults are nginx's, the most trusted front server's: `large_client_header_buffers`
(headers bounded, 431 past it), `client_header_timeout` and `client_body_timeout` (60 s),
`keepalive_timeout` (75 s). https://nginx.org/en/docs/http/ngx_http_core_module.html
"""

from __future__ import annotations

from dataclasses import dataclass

from sagehost.config import Settings


@dataclass(frozen=True, slots=True)
class Limits:
    body_bytes: int
    """The largest request body; past it the answer is 413 and the connection closes."""
    header_bytes: int = 64 * 1024
    """Request line plus headers; past it the answer is 431 and the connection closes."""
    header_timeout_s: float = 60.0
    """From a request's first byte until its headers are complete."""
    body_timeout_s: float = 60.0
    """The longest a body may go without a byte; also the grace before `min_body_rate` applies."""
    min_body_rate: int = 1024
    """Bytes per second a body must average once `body_timeout_s` has passed."""
    keep_alive_timeout_s: float = 75.0
    """An idle connection between requests is closed after this."""
    linger_s: float = 2.0
    """After an answer that closes the connection, what the client still sends is read and dropped
    for this long, so the kernel does not reset the connection before the answer is read
    (nginx's lingering close)."""

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            body_bytes=settings.max_payload_bytes,
            header_bytes=settings.max_header_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            min_body_rate=settings.min_body_rate,
            keep_alive_timeout_s=settings.keep_alive_timeout_s,
        )
