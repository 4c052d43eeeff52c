"""ASGI middleware of the service: a body size limit, request metrics, security headers, and the
demo page's Content-Security-Policy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lmrec.errors import MissingExtraError

try:
    from fastapi.responses import JSONResponse
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise MissingExtraError("fastapi", "serve") from exc

from lmrec.serve.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed, and bodies that have not
    all arrived ``timeout_s`` seconds after the head with 408 (and the connection closed)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # One timer for the whole body (what asyncio.timeout does, which Python 3.10 lacks): no task per
        # read on the hot path.
        task, expired = asyncio.current_task(), False

        def expire() -> None:
            nonlocal expired
            expired = True
            if task is not None:
                task.cancel()

        timer = asyncio.get_running_loop().call_later(self.timeout_s, expire) if self.timeout_s else None
        try:
            status, body = await self._read(receive)
        except asyncio.CancelledError:
            if not expired:
                raise
            if task is not None and sys.version_info >= (3, 11):
                task.uncancel()
            status, body = 408, b""
        finally:
            if timer is not None:
                timer.cancel()
        if status == 408:
            detail = f"request body not received within {self.timeout_s:g} s"
            await JSONResponse({"detail": detail}, status_code=408, headers={"Connection": "close"})(
                scope, receive, send
            )
            return
        if status == 413:
            await self._refuse(scope, receive, send)
        if status != 200:  # 413 answered, or 499: the client hung up, nobody to answer
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> tuple[int, bytes]:
        """(200, the whole body), (413, b"") past ``max_bytes``, or (499, b"") if the client hung up."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 499, b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return 413, b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                return 200, b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body over {self.max_bytes} bytes; send smaller batches"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class RequestMetrics:
    """Count every request by method, route template and status, and time it. A request whose client
    hung up before any answer is counted as 499 (client closed request), not as a server error."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, answered, gone = time.perf_counter(), 500, False, False

        async def send_status(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = int(message["status"]), True
            await send(message)

        async def receive_watching() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, receive_watching, send_status)
        finally:
            if gone and not answered:
                status = 499
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)


class SecurityHeaders:
    """No response may be framed by another site, or have its type sniffed; a response that sets no
    Content-Security-Policy of its own (the JSON API, /docs) gets one that says only that."""

    HEADERS = ((b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self.HEADERS if k not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", b"frame-ancestors 'none'"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
_INLINE_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.IGNORECASE | re.DOTALL)
_STYLE_ATTRIBUTE = re.compile(r"<[^>]*\sstyle\s*=", re.IGNORECASE)


def _sha256_source(text: str) -> str:
    # A browser hashes an inline block's text as parsed: UTF-8, with line breaks normalised to LF.
    digest = hashlib.sha256(text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def page_csp(page: str) -> str:
    """The demo page's Content-Security-Policy: scripts, styles, images and requests from this server
    only, no plugins, no framing. Inline ``<script>`` and ``<style>`` blocks of ``page`` are allowed by
    their hashes, so the page may keep or drop them without this policy breaking it; inline ``style=``
    attributes cannot be hashed (without 'unsafe-hashes'), so a page that has them gets 'unsafe-inline'
    styles (and then no style hashes, which would switch 'unsafe-inline' off)."""
    scripts = " ".join(dict.fromkeys(_sha256_source(m) for m in _INLINE_SCRIPT.findall(page)))
    if _STYLE_ATTRIBUTE.search(page):
        styles = "'unsafe-inline'"
    else:
        styles = " ".join(dict.fromkeys(_sha256_source(m) for m in _INLINE_STYLE.findall(page)))
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {scripts}".strip(),
            f"style-src 'self' {styles}".strip(),
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
