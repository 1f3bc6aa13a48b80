"""The API's HTTP server: uvicorn with bounds on slow and oversized request heads.

uvicorn's h11 protocol has an idle keep-alive timeout, but no limit on how long a request's head (request
line and headers) may take: its keep-alive timer is cancelled by the first byte received, so a slowloris
client trickling a header byte every few seconds holds its connection for ever.  ``GuardedH11Protocol``
adds that deadline (``header_timeout_s``, answered with 408 and a closed connection) and answers a head
larger than ``max_header_bytes`` with 431 (h11 alone answers 400, and only to a head that arrives in pieces).  The body's read time and size are the
application's (``api/limits.py``).
"""

from __future__ import annotations

import asyncio
import functools

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def _plain_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a deadline on each request head and a 431 for an oversized one."""

    def __init__(self, *args, header_timeout_s: float, max_header_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self._head_deadline: asyncio.TimerHandle | None = None

    def _arm_head_deadline(self, after_s: float) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(after_s, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline(self.header_timeout_s)

    def connection_lost(self, exc) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            # h11's own limit (max_incomplete_event_size) only sees a head that arrives in pieces.
            pending = self.conn.trailing_data[0] + data
            end = pending.find(b"\r\n\r\n")
            if (end if end >= 0 else len(pending)) > self.max_header_bytes:
                self._refuse_large_head()
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in (or the connection failed): no deadline
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # The next request's head: the idle keep-alive time, then the head's own time.
            self._arm_head_deadline(self.timeout_keep_alive + self.header_timeout_s)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # a head in progress: say why before closing; an idle one just closes
            self.logger.warning("%s: request headers not received within %g s; closing the connection",
                                "%s:%d" % self.client if self.client else "client", self.header_timeout_s)
            self.transport.write(_plain_response(408, "Request Timeout",
                                                 "the request headers did not arrive in time"))
        self.transport.close()

    def _refuse_large_head(self) -> None:
        self._disarm_head_deadline()
        self.logger.warning("request headers over %d bytes; answering 431", self.max_header_bytes)
        self.transport.write(_plain_response(431, "Request Header Fields Too Large",
                                             f"the request line and headers exceed {self.max_header_bytes} bytes"))
        self.transport.close()


def protocol_class(header_timeout_s: float, max_header_bytes: int):
    """The protocol class uvicorn's ``http`` option takes (it instantiates it per connection)."""
    return functools.partial(GuardedH11Protocol, header_timeout_s=header_timeout_s, max_header_bytes=max_header_bytes)


def serve(app, settings) -> None:
    """Run the API app under uvicorn with the settings' HTTP limits (docs/security.md)."""
    import uvicorn

    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info",
                http=protocol_class(settings.header_timeout_s, settings.max_header_bytes),
                h11_max_incomplete_event_size=settings.max_header_bytes,
                timeout_keep_alive=settings.keep_alive_timeout_s)
