"""Bounds on what one client may hold of a served process: its request head, its body, its connection.

Which layer bounds what (no reverse proxy is assumed in front):

- **the request head** (request line and headers): at most ``max_headers`` headers and
  ``max_head_bytes`` bytes, sent within ``head_timeout_s`` of the connection opening or of the
  previous response — else 431 or 408 and the connection is closed. uvicorn has no setting for
  these, so :class:`BoundedHttpTools` subclasses its httptools protocol (uvicorn's default with
  ``uvicorn[standard]``) and counts while the parser reads. Without httptools uvicorn's h11 protocol
  runs with its own size bound (``h11_max_incomplete_event_size``) and no head timeout.
- **the body**: at most ``max_body_bytes`` (413) and each part of it within ``body_timeout_s``
  (408): :class:`lmrec.serve.middleware.BodyLimit`, an ASGI middleware.
- **keep-alive and connections**: uvicorn's own settings, ``timeout_keep_alive`` (an idle
  connection is closed after ``keep_alive_s``) and ``limit_concurrency`` (past ``max_connections``
  connections or requests in flight, 503).
- **error bodies**: every error detail the app writes is cut to ``MAX_DETAIL`` characters
  (:func:`lmrec.serve.middleware.capped`).
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Any

MAX_DETAIL = 2000  # characters of an error's detail (and of the list of validation errors)
LINGER_S = 2.0  # after refusing a head, how long what the client still sends is read and dropped


@dataclass(frozen=True)
class Limits:
    """How much of the process one client may hold (see the module's docstring for where each applies)."""

    max_headers: int = 100
    max_head_bytes: int = 16 * 1024
    head_timeout_s: float = 10.0
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 30.0
    keep_alive_s: int = 5
    max_connections: int | None = 2048

    def uvicorn_options(self) -> dict[str, Any]:
        """Settings for ``uvicorn.Config``: the protocol that bounds the head, keep-alive, connections."""
        options: dict[str, Any] = {
            "timeout_keep_alive": self.keep_alive_s,
            "limit_concurrency": self.max_connections,
            "h11_max_incomplete_event_size": self.max_head_bytes,
        }
        protocol = bounded_protocol(self)
        if protocol is not None:
            options["http"] = protocol
        return options


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}
_HEADERS = (
    b"x-frame-options: DENY\r\nx-content-type-options: nosniff\r\ncontent-security-policy: frame-ancestors 'none'\r\n"
)


def raw_response(status: int, detail: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, written below the ASGI app."""
    body = json.dumps({"detail": detail}).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode("ascii")
    return head + _HEADERS + b"\r\n" + body


class _HeadRefused(Exception):
    """Raised inside a parser callback to stop reading a head that was refused."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
    HttpToolsProtocol = None  # type: ignore[misc,assignment]


def bounded_protocol(limits: Limits) -> Any:
    """A factory uvicorn calls for each connection (``uvicorn.Config(http=...)``), or None without httptools.
    A module-level class and a frozen dataclass: it pickles into ``--workers`` processes."""
    if HttpToolsProtocol is None:  # pragma: no cover
        return None
    return functools.partial(BoundedHttpTools, limits=limits)


if HttpToolsProtocol is not None:

    class BoundedHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol with the request head bounded in count, size and time."""

        def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limits = limits
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_count = self._head_bytes = 0
            self._head_started = False
            self._refused = False

        # -- the head's clock: from the connection (or the last response) to the end of the headers
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def _await_head(self) -> None:
            self._stop_head_clock()
            self._head_count = self._head_bytes = 0
            self._head_started = False
            self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

        def _stop_head_clock(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._head_started:  # a head begun and never finished: say why before closing
                self._refuse(408, f"request head not received within {self.limits.head_timeout_s:g} s")
            else:  # an idle connection: closed, as uvicorn closes an idle keep-alive connection
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.timeout_keep_alive_task is not None:  # waiting for the next request, not a pipelined one
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_clock()
            super().connection_lost(exc)

        # -- the head's size, counted as the parser reads it
        def on_message_begin(self) -> None:
            self._head_started = True
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(0, len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(1, len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._stop_head_clock()
            super().on_headers_complete()

        def _count(self, headers: int, size: int) -> None:
            self._head_count += headers
            self._head_bytes += size
            if self._head_count > self.limits.max_headers:
                self._refuse(431, f"more than {self.limits.max_headers} request headers")
            elif self._head_bytes > self.limits.max_head_bytes:
                self._refuse(431, f"request head over {self.limits.max_head_bytes} bytes")
            if self._refused:
                raise _HeadRefused

        def _refuse(self, status: int, detail: str) -> None:
            """Answer, then close gently: end our side and read (and drop) what the client is still
            sending for up to ``LINGER_S`` seconds, since closing with unread data would reset the
            connection, and a reset can destroy the answer before the client reads it."""
            self._refused = True
            self._stop_head_clock()
            self.transport.write(raw_response(status, detail))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(LINGER_S, self.transport.close)
            else:  # pragma: no cover - TLS transports cannot half-close
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if not self._refused:  # what a refused client still sends is not read
                super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # the parser's error for our own refusal: already answered
                super().send_400_response(msg)


__all__ = ["MAX_DETAIL", "Limits", "bounded_protocol", "raw_response"]
