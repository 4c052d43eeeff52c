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

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from lmrec.cache import default_cache
from lmrec.errors import DataError, LmrecError, MissingExtraError

try:
    from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Security
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, PlainTextResponse, Response
    from fastapi.security import APIKeyHeader, HTTPBearer
    from pydantic import AfterValidator, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise MissingExtraError("fastapi", "serve") from exc

from lmrec import __version__
from lmrec.serve.auth import AuthError, authorize, key_from_headers
from lmrec.serve.describe import describe
from lmrec.serve.handlers import http_error, lmrec_error, sendable, validation_error
from lmrec.serve.limits import Limits
from lmrec.serve.middleware import ASGIApp, BodyLimit, RequestMetrics, SecurityHeaders, page_csp
from lmrec.serve.page import router as page_router
from lmrec.serve.retrain import default_store
from lmrec.serve.runner import FOLLOW_SECONDS, MAX_LOGGED_PATH, WORKER_START_S, BriefAccessLog, log_config, run_service
from lmrec.serve.schemas import (
    MAX_BATCH,
    FeedbackEvent,
    FeedbackResponse,
    Health,
    HistoryEntry,
    HistoryResponse,
    ItemIn,
    ItemOut,
    KeyCreated,
    KeyInfo,
    KeyRequest,
    PathId,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ServingInfo,
    UpsertResponse,
    UserList,
    recommend_json,
    valid_id,
)
from lmrec.serve.service import Batcher, RunFollower, RunWatcher, Service
from lmrec.serve.state import NotFound, RerankSpec, score_together
from lmrec.serve.store import SCOPES, Event, Item, brief, check_scopes
from lmrec.serve.stores import open_store
from lmrec.text.encoders import TextEncoder

MAX_BODY_BYTES = Limits.max_body_bytes


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


class _Service(FastAPI):
    """FastAPI, with the request metrics and the security headers outside Starlette's error middleware,
    so that a 500 it writes for an unhandled exception carries the headers and is counted too."""

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        return RequestMetrics(SecurityHeaders(inner), self.state.service.metrics)


# -- the app -----------------------------------------------------------------------------------------
def create_app(
    run_dir: str | Path,
    db_url: str | Path | None = None,
    cache_dir: str | Path | None = None,
    require_keys: bool = True,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float | None = Limits.body_timeout_s,
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
    ``require_keys=False`` turns API keys off, for local use only. ``max_body_bytes`` and
    ``body_timeout_s`` bound a request body's size (413) and the wait for each part of it (408).
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

    app = _Service(
        title="lmrec",
        version=__version__,
        description="Real-time recommendations from a trained lmrec run, with a feedback loop.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(LmrecError, lmrec_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout_s=body_timeout_s)
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
        items = [Item(it.item, it.title, it.fields()) for it in body]
        upserted = service.store.upsert_items(items)
        # A model that reads item text encodes the new items here, in this worker thread (off the event
        # loop, in batches), so this process serves them when the PUT returns; other processes encode
        # them in the background when their requests see them.
        try:
            service.live.grow()
        except Exception as err:  # stored all the same: served once an encoding succeeds
            logging.getLogger("uvicorn.error").warning("items stored but not yet encoded: %s", err)
        return UpsertResponse(upserted=upserted)

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
            detail = f"reload failed, still serving {service.live.version}: {sendable(str(err)) or type(err).__name__}"
            raise HTTPException(400, detail) from None
        return service.info()

    @app.post("/admin/keys", status_code=201, response_model=KeyCreated, dependencies=[_need("admin")])
    def create_key(body: KeyRequest, response: Response) -> KeyCreated:
        response.headers["Cache-Control"] = "no-store"  # it carries a secret: no cache may keep it
        key_id, key = service.store.create_key(body.scopes)
        return KeyCreated(key_id=key_id, key=key, scopes=list(check_scopes(body.scopes)))

    @app.get("/admin/keys", response_model=list[KeyInfo], dependencies=[_need("admin")])
    def list_keys() -> list[KeyInfo]:
        return [
            KeyInfo(key_id=k.key_id, scopes=list(k.scopes), created=k.created, revoked=k.revoked)
            for k in service.store.list_keys()
        ]

    @app.delete("/admin/keys/{key_id}", status_code=204, dependencies=[_need("admin")])
    def revoke_key(key_id: Annotated[str, PathParam(min_length=1, max_length=64), AfterValidator(valid_id)]) -> None:
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
    limits: Limits | None = None,
) -> None:
    """Run the service with uvicorn until interrupted (:func:`lmrec.serve.runner.run_service`).

    ``limits``: what one client may hold of a process (:class:`lmrec.serve.limits.Limits`: head and
    body sizes and read timeouts, keep-alive, connections); the defaults when None.

    ``workers`` > 1 starts that many worker processes (uvicorn's supervisor; one listening socket),
    each building its own app from the same arguments (:func:`create_app` is the factory). They share
    the store, so a store every process can write is wanted: PostgreSQL. SQLite works on one machine
    but lets one writer in at a time, so feedback waits its turn; a warning says so. Their metrics are
    summed over a shared directory, and a reload through any of them reaches all (``follow``).
    """
    run_service(
        create_app,
        run_dir,
        db_url,
        cache_dir,
        host=host,
        port=port,
        require_keys=require_keys,
        access_log=access_log,
        ann=ann,
        watch=watch,
        workers=workers,
        micro_batch=micro_batch,
        follow=follow,
        limits=limits or Limits(),
    )


__all__ = [
    "FOLLOW_SECONDS",
    "MAX_LOGGED_PATH",
    "SCOPES",
    "WORKER_START_S",
    "Batcher",
    "BriefAccessLog",
    "RunFollower",
    "RunWatcher",
    "Service",
    "create_app",
    "log_config",
    "page_csp",
    "serve",
]
