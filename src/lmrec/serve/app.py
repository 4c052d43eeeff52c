"""The recommendation service: a FastAPI app over one run and one event store.

Endpoints (OpenAPI docs at ``/docs``)::

    POST   /recommend            read    top-k for a user and/or an ad-hoc history, optionally re-ranked
    POST   /feedback             write   one event or a list; the next /recommend sees it
    PUT    /items                write   add or update items (title and text fields)
    GET    /items/{item}         read    what is known about one item
    GET    /users                read    some user IDs of the run (for the demo page)
    GET    /users/{user}/history read    a user's live history
    POST   /admin/reload         admin   re-open the run (or another one) and swap it in atomically
    POST   /admin/keys           admin   create an API key (the plaintext is shown once)
    GET    /admin/keys           admin   list keys (never their secrets)
    DELETE /admin/keys/{key_id}  admin   revoke a key
    GET    /health, /metrics, /  public  liveness, Prometheus text, the demo page

Every client mistake is a 4xx with a JSON body ``{"detail": "..."}``: malformed JSON or an ambiguous
key (two ``Authorization`` headers, two different keys) is 400, a missing or wrong key or an
``Authorization`` scheme other than Bearer 401, a missing scope 403, an unknown user or item 404
(path) or 422 (body), a body over the size limit 413, anything that fails validation 422 — an ID
that breaks the one ID rule (:func:`lmrec.serve.store.id_problem`: 1 to 256 printable characters,
no ``/``), a text the store cannot hold (a lone surrogate, NUL), a timestamp outside 1970 to 9999.
Messages quote what was sent cut short (:func:`lmrec.serve.store.brief`), and so does the access log.

Every response says it may not be framed (``X-Frame-Options``, CSP ``frame-ancestors``); the demo
page carries a Content-Security-Policy that lets it run only scripts and styles from this server
(plus any inline script, by its SHA-256, computed from the page when the app is created).

Several service processes may share one database: every ``/recommend`` reads the user's events
from the store, so an event written through one process is seen by the next request to any.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import hashlib
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from lmrec.cache import default_cache
from lmrec.errors import ConfigError, DataError, LmrecError, MissingExtraError

try:
    from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Security
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from fastapi.security import APIKeyHeader, HTTPBearer
    from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
    from pydantic_core import PydanticCustomError
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise MissingExtraError("fastapi", "serve") from exc

from lmrec import __version__
from lmrec.runs import RUN_FILE, open_run
from lmrec.serve.auth import AuthError, authorize, key_from_headers
from lmrec.serve.metrics import Metrics
from lmrec.serve.page import describe
from lmrec.serve.page import router as page_router
from lmrec.serve.retrain import default_store
from lmrec.serve.state import LiveState, NotFound, Prepared, RerankSpec, score_together
from lmrec.serve.store import (
    MAX_ID,
    MAX_TIMESTAMP,
    SCOPES,
    Event,
    EventStore,
    Item,
    SQLiteStore,
    StoreUnavailable,
    brief,
    check_scopes,
    fields_problem,
    id_problem,
    text_problem,
)
from lmrec.serve.stores import open_store
from lmrec.text.encoders import TextEncoder

MAX_BODY_BYTES = 1 << 20
MAX_BATCH = 1000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- request and response bodies --------------------------------------------------------------------
def _raw_id(value: Any) -> Any:
    """IDs are strings; a JSON integer is accepted and read as its decimal string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _valid_id(value: str) -> str:
    problem = id_problem(value)
    if problem:
        raise PydanticCustomError("invalid_id", "an ID {problem}", {"problem": problem})
    return value


def _valid_name(value: str) -> str:
    problem = id_problem(value, 32)
    if problem:
        raise PydanticCustomError("invalid_name", "a name {problem}", {"problem": problem})
    return value


def _valid_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise PydanticCustomError("invalid_text", "a text {problem}", {"problem": problem})
    return value


_ID_RULE = f"1 to {MAX_ID} printable characters, no '/', not '.' or '..'"
RawId = Annotated[
    str,
    BeforeValidator(_raw_id),
    Field(min_length=1, max_length=MAX_ID, description=_ID_RULE),
    AfterValidator(_valid_id),
]
# An ID in a URL path: the same rule (a longer path is refused before anything reads or echoes it).
PathId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID, description=_ID_RULE), AfterValidator(_valid_id)]
Text = Annotated[str, AfterValidator(_valid_text)]


class _Strict(BaseModel):
    # Strict: "10" is not a k, "true" is not a bool; extra fields are a typo, not silence.
    model_config = ConfigDict(extra="forbid", strict=True)


class RerankRequest(_Strict):
    """Re-rank the model's top ``candidates`` for diversity (MMR, DPP) or calibration to the history."""

    method: Literal["mmr", "dpp", "calibration"]
    lam: float = Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="the trade-off: MMR's λ (1 = the model's order), DPP's θ (must be < 1), calibration's λ",
    )
    similarity: Literal["genre", "embedding", "cooccurrence"] = Field(
        "genre", description="how MMR and DPP compare items (calibration always uses genres)"
    )
    candidates: int = Field(100, ge=1, le=1000, description="how many of the model's top items to re-rank")

    @model_validator(mode="after")
    def _dpp_theta_below_one(self) -> RerankRequest:
        if self.method == "dpp" and self.lam >= 1.0:
            raise ValueError("DPP needs lam < 1 (θ = 1 would ignore relevance entirely)")
        return self


class RecommendRequest(_Strict):
    user: RawId | None = Field(None, description="a user ID; known to the run, or new with feedback")
    history: list[RawId] | None = Field(
        None, max_length=MAX_BATCH, description="item IDs just consumed (an anonymous session, or extra context)"
    )
    k: int = Field(10, ge=1, le=100, description="how many items")
    exclude_seen: bool = Field(True, description="leave out items already in the history")
    rerank: RerankRequest | None = Field(None, description="re-rank the top candidates; default: the model's order")
    explain: bool = Field(False, description="a reason per item citing the user's history (item similarity, no LLM)")


class ScoredItem(BaseModel):
    item: str
    score: float
    title: str
    year: int | None = None
    genres: list[str] = Field(default_factory=list)
    because: str | None = Field(None, description="with explain: why, naming only items of the user's history")
    cited: list[str] | None = Field(None, description="with explain: the history item IDs the reason rests on")


class RerankInfo(BaseModel):
    method: str
    lam: float
    similarity: str | None = Field(description="None for calibration, which compares genre distributions")
    candidates: int
    reranker: str = Field(description="the re-ranker that ran, as its repr")


class RecommendResponse(BaseModel):
    user: str | None
    items: list[ScoredItem]
    model: str
    version: str
    rerank: RerankInfo | None = Field(None, description="the re-ranking applied, or null for the model's order")


class FeedbackEvent(_Strict):
    user: RawId
    item: RawId
    type: Annotated[str, AfterValidator(_valid_name)] = Field(
        "click", min_length=1, max_length=32, description="click, view, purchase, rating, ..."
    )
    timestamp: float | None = Field(
        None,
        ge=0,
        le=MAX_TIMESTAMP,
        allow_inf_nan=False,
        description="seconds since the epoch (up to the end of year 9999); default: when it arrives",
    )


class FeedbackResponse(BaseModel):
    accepted: int


class ItemIn(BaseModel):
    """An item: its ID, an optional title, and any other text fields (``genres``, ``description``)."""

    model_config = ConfigDict(extra="allow")
    item: RawId
    title: Text | None = Field(None, max_length=1000)

    @model_validator(mode="after")
    def _storable_fields(self) -> ItemIn:
        problem = fields_problem(self.model_extra or {})
        if problem:
            raise PydanticCustomError("invalid_fields", "the item's fields {problem}", {"problem": problem})
        return self


class ItemOut(BaseModel):
    item: str
    title: str
    fields: dict[str, Any]
    recommendable: bool = Field(description="false for items the current model cannot score yet")


class UpsertResponse(BaseModel):
    upserted: int


class UserList(BaseModel):
    users: list[str]
    total: int = Field(description="users in the run's dataset (users known only from feedback not counted)")


class HistoryEntry(BaseModel):
    item: str
    title: str
    source: Literal["dataset", "feedback"]
    type: str | None = None
    timestamp: float | None = None


class HistoryResponse(BaseModel):
    user: str
    known_user: bool
    length: int
    items: list[HistoryEntry] = Field(description="the most recent ``limit`` entries, oldest first")


class ReloadRequest(_Strict):
    run: Text | None = Field(None, max_length=4096, description="a run directory; default: the one being served")


class ServingInfo(BaseModel):
    model: str
    version: str
    run: str


class KeyRequest(_Strict):
    scopes: list[Literal["read", "write", "admin"]] = Field(min_length=1)


class KeyCreated(BaseModel):
    key_id: str
    key: str = Field(description="the plaintext key; it is not stored and cannot be shown again")
    scopes: list[str]


class KeyInfo(BaseModel):
    key_id: str
    scopes: list[str]
    created: float
    revoked: float | None


class Health(BaseModel):
    status: str
    model: str
    version: str
    run: str
    users: int
    items: int
    lmrec_version: str
    index: str = Field(description="how top-k is found: exact, or an ANN index (hnsw, ivf)")
    rerankers: list[str] = Field(description="re-ranking methods this run supports")
    similarities: list[str] = Field(description="item similarities this run supports for MMR and DPP")


def recommend_json(answer: dict[str, Any]) -> bytes:
    """A ``RecommendResponse`` as JSON bytes, every field present (as pydantic would write it)."""
    items = [
        {
            "item": it["item"],
            "score": it["score"],
            "title": it["title"],
            "year": it.get("year"),
            "genres": it.get("genres", []),
            "because": it.get("because"),
            "cited": it.get("cited"),
        }
        for it in answer["items"]
    ]
    body = {
        "user": answer["user"],
        "items": items,
        "model": answer["model"],
        "version": answer["version"],
        "rerank": answer.get("rerank"),
    }
    return json.dumps(body, allow_nan=False, separators=(",", ":"), default=_json_scalar).encode("ascii")


def _json_scalar(value: Any) -> Any:
    if hasattr(value, "item"):  # a numpy scalar that slipped through: its Python value
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


# -- the service ------------------------------------------------------------------------------------
class Service:
    """What the endpoints share: the store, the live state (one reference, swapped on reload)."""

    def __init__(
        self,
        run_dir: Path,
        store: EventStore,
        cache_dir: Path,
        require_keys: bool,
        ann: bool = False,
        text_encoder: TextEncoder | None = None,
        metrics_dir: str | Path | None = None,
        run_number: int = 0,
    ) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.require_keys = require_keys
        self.ann = ann
        self.text_encoder = text_encoder
        self.live = self._open(run_dir)
        self.metrics = Metrics(metrics_dir)
        self.run_number = run_number  # the store's record of the served run this process follows
        self._reload_lock = threading.Lock()

    def reload(self, run_dir: str | None, record: bool = True, number: int | None = None) -> LiveState:
        """Build the new state completely, then replace the one reference requests read.

        ``record``: record the run in the store, so that every other process on it follows
        (:class:`RunFollower`); a reload that follows such a record passes its ``number`` instead.
        """
        with self._reload_lock:
            target = Path(run_dir) if run_dir else self.live.run.directory
            self.live = self._open(target)
            if record:
                number = self.store.record_run(str(target))
            if number is not None:
                self.run_number = max(self.run_number, number)
            self.metrics.add_reload()
            return self.live

    def _open(self, run_dir: Path) -> LiveState:
        return LiveState.open(run_dir, self.cache_dir, self.store, ann=self.ann, text_encoder=self.text_encoder)

    def info(self) -> ServingInfo:
        live = self.live
        return ServingInfo(model=live.model_name, version=live.version, run=str(live.run.directory))


class RunWatcher:
    """Reload the service when the served run's ``run.json`` changes: the run was rewritten, or the run
    directory is a symlink that now points at another run (``ln -sfn runs/new runs/current``).

    A daemon thread checks every ``interval`` seconds. A reload that fails (a run still being written)
    leaves the old state serving and is tried again at the next check; a swap by ``/admin/reload`` is
    taken as the new starting point, not reloaded again.
    """

    def __init__(self, service: Service, interval: float) -> None:
        self.service, self.interval = service, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lmrec-run-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _stamp(self) -> tuple[str, int] | None:
        """Which file the served run's ``run.json`` is now, and when it was written (None: unreadable)."""
        path = self.service.live.run.directory / RUN_FILE
        try:
            return str(path.resolve()), path.stat().st_mtime_ns
        except OSError:
            return None

    def _loop(self) -> None:
        log = logging.getLogger("uvicorn.error")  # printed by `lmrec serve`
        live, seen, failed = self.service.live, self._stamp(), None
        while not self._stop.wait(self.interval):
            if self.service.live is not live:  # swapped through /admin/reload meanwhile
                live, seen = self.service.live, self._stamp()
                continue
            now = self._stamp()
            if now is None or now == seen:
                continue
            try:
                live = self.service.reload(None, record=False)  # every worker watches for itself
            except Exception as err:  # keep serving the old state and watching
                if now != failed:
                    log.warning("run %s changed but reloading failed, still serving %s: %s", now[0], live.version, err)
                failed = now
                continue
            seen = now
            log.info("run %s changed: now serving %s", now[0], live.version)


class Batcher:
    """Score the ``/recommend`` requests that are in flight together in one forward pass.

    Requests are answered on the event loop. Each one checks its input, reads its history, hands its
    :class:`~lmrec.serve.state.Prepared` here and waits; the first of them schedules a flush with
    ``call_soon``, which runs after every request the loop already had ready has handed in its own.
    So a lone request waits for nothing, and under load the requests read in one turn of the loop share
    one batch (:func:`~lmrec.serve.state.score_together`). If a batch fails, its queries are scored
    one by one, so only a query that fails alone gets the error.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Prepared, asyncio.Future[tuple[np.ndarray, np.ndarray]]]] = []

    async def score(self, query: Prepared) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = loop.create_future()
        self._pending.append((query, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            results = score_together([q for q, _ in pending])
        except Exception:
            for query, future in pending:
                try:
                    _resolve(future, score_together([query])[0])
                except Exception as err:
                    if not future.done():
                        future.set_exception(err)
            return
        for (_, future), result in zip(pending, results, strict=True):
            _resolve(future, result)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # a client that went away cancelled its request
        future.set_result(value)


class RunFollower:
    """Serve the run the store says is current: ``/admin/reload`` on any process of a store records the
    run it swapped in (:meth:`EventStore.record_run`), and every other process that follows the store
    (every worker of ``lmrec serve --workers N``, every replica on one PostgreSQL) reloads it within
    ``interval`` seconds. A run that fails to load is logged once and left; the old state keeps serving.
    """

    def __init__(self, service: Service, interval: float) -> None:
        self.service, self.interval = service, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lmrec-run-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> bool:
        """Reload if the store records a newer run than this process serves; True if it reloaded."""
        current = self.service.store.current_run()
        if current is None or current[0] <= self.service.run_number:
            return False
        number, run = current
        try:
            live = self.service.reload(run, record=False, number=number)
        except Exception as err:  # keep serving the old state; a later record is tried again
            self.service.run_number = number
            logging.getLogger("uvicorn.error").warning("could not follow the store to run %s: %s", run, err)
            return False
        logging.getLogger("uvicorn.error").info("following the store: now serving %s from %s", live.version, run)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as err:  # the store is unreachable for a moment: try at the next check
                logging.getLogger("uvicorn.error").warning("could not read the served run from the store: %s", err)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


# Declared in OpenAPI (so /docs can send a key); the check itself reads the raw headers (auth.py).
_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key in an X-API-Key header")


def _need(scope: str) -> Any:
    """A dependency that lets a request through only with a key carrying ``scope``."""

    # async: run on the event loop, not in a worker thread (a thread hop costs more than the check).
    async def check(
        request: Request, _bearer: Annotated[Any, Security(_BEARER)], _api_key: Annotated[Any, Security(_API_KEY)]
    ) -> None:
        service = _service(request)
        if not service.require_keys:
            return
        try:
            authorize(service.store, key_from_headers(request.headers.items()), scope)
        except AuthError as err:
            headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
            raise HTTPException(err.status, err.message, headers=headers) from None

    return Depends(check)


# -- ASGI middleware ---------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body over {self.max_bytes} bytes; send smaller batches"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class RequestMetrics:
    """Count every request by method, route template and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
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


# -- errors ------------------------------------------------------------------------------------------
def _sendable(text: str) -> str:
    """``text`` that a JSON response can carry: anything UTF-8 cannot encode is escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        ctx = bad_json[0].get("ctx") or {}
        return JSONResponse({"detail": f"malformed JSON body: {ctx.get('error', 'cannot parse')}"}, status_code=400)
    errors = _one_union_member(errors, exc.body)
    # Only where, what and why: echoing the input back could hold values JSON cannot carry (NaN).
    brief = [
        {"loc": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body", "msg": str(e.get("msg"))}
        for e in errors
    ]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in brief)
    return JSONResponse({"detail": detail, "errors": brief}, status_code=422)


def _one_union_member(errors: Sequence[Any], body: Any) -> Sequence[Any]:
    """For a body that may be one event or a list of them, report only the shape that was sent."""
    tags = {e["loc"][1] for e in errors if len(e.get("loc", ())) > 1 and e["loc"][0] == "body"}
    single, many = "FeedbackEvent", "list[FeedbackEvent]"
    if not {single, many} <= tags:
        return errors
    keep = many if isinstance(body, list) else single
    return [{**e, "loc": ("body", *e["loc"][2:])} for e in errors if e["loc"][1] == keep]


def _lmrec_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, NotFound):
        status = 404
    elif isinstance(exc, DataError | ConfigError):
        status = 422
    elif isinstance(exc, StoreUnavailable):  # the server's trouble, not the client's
        status = 503
    else:
        status = 400
    return JSONResponse({"detail": _sendable(str(exc))}, status_code=status)


# -- the app -----------------------------------------------------------------------------------------
def create_app(
    run_dir: str | Path,
    db_url: str | Path | None = None,
    cache_dir: str | Path | None = None,
    require_keys: bool = True,
    max_body_bytes: int = MAX_BODY_BYTES,
    ann: bool = False,
    text_encoder: TextEncoder | None = None,
    watch: float | None = None,
    micro_batch: bool = True,
    metrics_dir: str | Path | None = None,
    follow: float | None = None,
    follow_since: int | None = None,
) -> FastAPI:
    """The service for the run in ``run_dir``, with its events in ``db_url``.

    ``db_url`` defaults to ``RUN_DIR/events.db`` (for a run made by ``lmrec retrain``: the store it was
    retrained from); ``cache_dir`` (where named datasets are cached) to ``~/.cache/lmrec``.
    ``require_keys=False`` turns API keys off, for local use only.
    ``ann=True`` answers top-k from an HNSW index (:mod:`lmrec.serve.ann`, needs ``lmrec[ann]``)
    when the model scores by a dot product, and exactly otherwise. ``text_encoder`` replaces the
    one a text model names in its config (which is loaded on the first item added at serve time).
    ``watch``: check the served run's ``run.json`` every so many seconds and reload when it changes
    (:class:`RunWatcher`; it runs while the app's lifespan does).
    ``micro_batch``: score the ``/recommend`` requests in flight together in one forward pass
    (:class:`Batcher`); off, each is scored alone.
    ``metrics_dir``: a directory shared by the worker processes of one service, where each keeps its
    counters so that ``/metrics`` sums over all of them (:mod:`lmrec.serve.metrics`).
    ``follow``: every so many seconds, reload the run the store records as current when another
    process recorded a newer one (:class:`RunFollower`). ``follow_since``: the store's record number
    when the service (all its workers) started; a worker started after a later record (a worker
    replaced after a reload) serves that record's run instead of ``run_dir``.
    """
    run_path = Path(run_dir)
    store = open_store(db_url if db_url is not None else default_store(run_path))
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    try:
        current = store.current_run() if follow else None
        number = current[0] if current is not None else 0
        if current is not None and follow_since is not None and number > follow_since:
            run_path = Path(current[1])
        service = Service(
            run_path,
            store,
            cache,
            require_keys,
            ann=ann,
            text_encoder=text_encoder,
            metrics_dir=metrics_dir,
            run_number=number,
        )
    except BaseException:
        store.close()
        raise
    batcher = Batcher() if micro_batch else None
    page = resources.files("lmrec.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    page_headers = {"Content-Security-Policy": page_csp(page), "Referrer-Policy": "no-referrer"}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = RunWatcher(service, watch) if watch else None
        follower = RunFollower(service, follow) if follow else None
        for thread in (watcher, follower):
            if thread is not None:
                thread.start()
        try:
            yield
        finally:
            for thread in (watcher, follower):
                if thread is not None:
                    thread.stop()
            service.metrics.close()
            store.close()

    app = FastAPI(
        title="lmrec",
        version=__version__,
        description="Real-time recommendations from a trained lmrec run, with a feedback loop.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(LmrecError, _lmrec_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, metrics=service.metrics)  # added last: outermost
    app.include_router(page_router)  # the demo page's script, style and config (lmrec.serve.page)

    # The hot path. It runs on the event loop: its work is short and CPU-bound (~2 ms with one torch
    # thread), so a hop to a worker thread per request would cost more than it buys. The answer is our
    # own, built in the schema's shape: it is written with json once, not validated again by pydantic
    # (``response_model`` still documents it in OpenAPI).
    @app.post("/recommend", response_model=RecommendResponse, dependencies=[_need("read")])
    async def recommend(body: RecommendRequest) -> Response:
        r = body.rerank
        spec = None if r is None else RerankSpec(r.method, r.lam, r.similarity, r.candidates)
        live = service.live
        query = live.query(body.user, body.history, body.k, body.exclude_seen, spec)
        if batcher is None:
            ((top, scores),) = score_together([query])
        else:
            top, scores = await batcher.score(query)
        out, stored = live.answer(query, top, scores)
        out = describe(live, out, body.user, body.history, explain=body.explain, stored=stored)  # year, genres, why
        return Response(recommend_json(out), media_type="application/json")

    @app.post("/feedback", status_code=202, response_model=FeedbackResponse, dependencies=[_need("write")])
    def feedback(
        body: Annotated[
            FeedbackEvent | Annotated[list[FeedbackEvent], Field(min_length=1, max_length=MAX_BATCH)], Body()
        ],
    ) -> FeedbackResponse:
        events = body if isinstance(body, list) else [body]
        live = service.live
        unknown = live.unknown_items([e.item for e in events])
        if unknown:
            raise DataError(f"unknown item id(s) {unknown[:10]}; add new items with PUT /items first")
        n = service.store.add_events([Event(e.user, e.item, e.type, e.timestamp) for e in events])
        service.metrics.add_events(n)
        return FeedbackResponse(accepted=n)

    @app.put("/items", response_model=UpsertResponse, dependencies=[_need("write")])
    def put_items(body: Annotated[list[ItemIn], Field(min_length=1, max_length=MAX_BATCH)]) -> UpsertResponse:
        items = [Item(it.item, it.title, dict(it.model_extra or {})) for it in body]
        return UpsertResponse(upserted=service.store.upsert_items(items))

    @app.get("/items/{item}", response_model=ItemOut, dependencies=[_need("read")])
    def get_item(item: PathId) -> dict[str, Any]:
        return service.live.item_info(item)

    @app.get("/users", response_model=UserList, dependencies=[_need("read")])
    def users(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> UserList:
        ids = service.live.run.dataset.users.ids
        return UserList(users=ids[:limit], total=len(ids))

    @app.get("/users/{user}/history", response_model=HistoryResponse, dependencies=[_need("read")])
    def history(user: PathId, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> HistoryResponse:
        live = service.live
        hist = live.history(user)
        known = live.known_user(user)
        if not known and not hist.events:
            raise NotFound(f"unknown user {brief(user)}: no history in the run and no feedback")
        entries: list[tuple[str, Literal["dataset", "feedback"], str | None, float | None]]
        entries = [(raw, "dataset", None, None) for raw in hist.dataset_items]
        entries += [(e.item, "feedback", e.type, e.timestamp) for e in hist.events]
        recent = entries[-limit:]
        titles = live.titles([raw for raw, *_ in recent])
        return HistoryResponse(
            user=user,
            known_user=known,
            length=len(entries),
            items=[
                HistoryEntry(item=raw, title=title, source=src, type=kind, timestamp=ts)
                for (raw, src, kind, ts), title in zip(recent, titles, strict=True)
            ],
        )

    @app.post("/admin/reload", response_model=ServingInfo, dependencies=[_need("admin")])
    def reload(body: Annotated[ReloadRequest | None, Body()] = None) -> ServingInfo:
        try:
            service.reload(body.run if body else None)
        except Exception as err:  # whatever is wrong with that directory, the old state keeps serving
            logging.getLogger("uvicorn.error").warning("reload failed", exc_info=not isinstance(err, LmrecError))
            detail = f"reload failed, still serving {service.live.version}: {_sendable(str(err)) or type(err).__name__}"
            raise HTTPException(400, detail) from None
        return service.info()

    @app.post("/admin/keys", status_code=201, response_model=KeyCreated, dependencies=[_need("admin")])
    def create_key(body: KeyRequest) -> KeyCreated:
        key_id, key = service.store.create_key(body.scopes)
        return KeyCreated(key_id=key_id, key=key, scopes=list(check_scopes(body.scopes)))

    @app.get("/admin/keys", response_model=list[KeyInfo], dependencies=[_need("admin")])
    def list_keys() -> list[KeyInfo]:
        return [
            KeyInfo(key_id=k.key_id, scopes=list(k.scopes), created=k.created, revoked=k.revoked)
            for k in service.store.list_keys()
        ]

    @app.delete("/admin/keys/{key_id}", status_code=204, dependencies=[_need("admin")])
    def revoke_key(key_id: Annotated[str, PathParam(min_length=1, max_length=64), AfterValidator(_valid_id)]) -> None:
        if not service.store.revoke_key(key_id):
            raise NotFound(f"no active key {brief(key_id)}")

    @app.get("/health", response_model=Health)
    def health() -> Health:
        live = service.live
        ds = live.run.dataset
        return Health(
            status="ok",
            model=live.model_name,
            version=live.version,
            run=str(live.run.directory),
            users=ds.n_users,
            items=ds.n_items,
            lmrec_version=__version__,
            index=live.index,
            rerankers=live.rerankers,
            similarities=live.similarities,
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        info = service.info()
        text = service.metrics.render(info.model, info.version, info.run)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    return app


FOLLOW_SECONDS = 1.0  # how often a served process checks the store for a run reloaded elsewhere
WORKER_START_S = 60  # how long a worker process may take to import before it answers health pings


def serve(
    run_dir: str | Path,
    db_url: str | Path | None = None,
    cache_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    require_keys: bool = True,
    access_log: bool = True,
    ann: bool = False,
    watch: float | None = None,
    workers: int = 1,
    micro_batch: bool = True,
    follow: float | None = FOLLOW_SECONDS,
) -> None:
    """Run the service with uvicorn until interrupted.

    ``workers`` > 1 starts that many worker processes (uvicorn's supervisor; one listening socket),
    each building its own app from the same arguments (:func:`create_app` is the factory). They share
    the store, so a store every process can write is wanted: PostgreSQL. SQLite works on one machine
    but lets one writer in at a time, so feedback waits its turn; a warning says so. Their metrics are
    summed over a shared directory, and a reload through any of them reaches all (``follow``).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError("uvicorn", "serve") from exc
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    db = db_url if db_url is not None else default_store(Path(run_dir))
    store = open_store(db)
    try:
        current = store.current_run()
        sqlite = isinstance(store, SQLiteStore)
    finally:
        store.close()
    since = current[0] if current is not None else 0
    options: dict[str, Any] = {"require_keys": require_keys, "ann": ann, "watch": watch, "micro_batch": micro_batch}
    options.update(follow=follow, follow_since=since)
    log = logging.getLogger("uvicorn.error")
    if workers == 1:
        app = create_app(run_dir, db, cache_dir, **options)
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_config=log_config())
        return
    from uvicorn.supervisors import Multiprocess

    if sqlite:
        log.warning(
            "%d workers on one SQLite store: SQLite lets one writer in at a time, so /feedback from the workers "
            "queues; use PostgreSQL (--db postgresql://...) for several workers",
            workers,
        )
    open_run(Path(run_dir), Path(cache_dir) if cache_dir is not None else default_cache())  # fail here, not N times
    with tempfile.TemporaryDirectory(prefix="lmrec-serve-") as metrics_dir:
        factory = functools.partial(create_app, str(run_dir), str(db), cache_dir, metrics_dir=metrics_dir, **options)
        config = uvicorn.Config(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            log_config=log_config(),
            # A worker answers the supervisor's health pings only once it has imported torch and the
            # service, which takes more than uvicorn's default 5 s on a small, busy machine.
            timeout_worker_healthcheck=WORKER_START_S,
        )
        server = uvicorn.Server(config)
        sock = config.bind_socket()
        try:
            Multiprocess(config, target=server.run, sockets=[sock]).run()
        finally:
            sock.close()


MAX_LOGGED_PATH = 200  # characters of a request's path and query in the access log


class BriefAccessLog(logging.Filter):
    """Cut the request path in uvicorn's access log lines to ``MAX_LOGGED_PATH`` characters, so a
    client cannot write a 16 KiB ID into the log with every request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"{a[:MAX_LOGGED_PATH]}...({len(a)} characters)"
                if isinstance(a, str) and len(a) > MAX_LOGGED_PATH
                else a
                for a in record.args
            )
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with :class:`BriefAccessLog` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["brief_paths"] = {"()": BriefAccessLog}
    config["handlers"]["access"].setdefault("filters", []).append("brief_paths")
    return config


__all__ = ["SCOPES", "create_app", "serve"]
