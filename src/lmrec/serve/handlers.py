"""How the service answers errors: every client mistake a 4xx with ``{"detail": "..."}``, every detail
cut to ``MAX_DETAIL`` characters (a 1,000-event batch of mistakes is not echoed back whole)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmrec.errors import ConfigError, DataError, MissingExtraError

try:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise MissingExtraError("fastapi", "serve") from exc

from lmrec.serve.limits import MAX_DETAIL
from lmrec.serve.state import NotFound
from lmrec.serve.store import StoreUnavailable

MAX_ERRORS = 20  # validation errors listed one by one; the rest are counted


def sendable(text: str) -> str:
    """``text`` that a JSON response can carry: anything UTF-8 cannot encode is escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def capped(text: str) -> str:
    """``text`` cut to ``MAX_DETAIL`` characters, saying how long it was."""
    return text if len(text) <= MAX_DETAIL else f"{text[:MAX_DETAIL]}... ({len(text)} characters)"


def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        ctx = bad_json[0].get("ctx") or {}
        detail = capped(f"malformed JSON body: {ctx.get('error', 'cannot parse')}")
        return JSONResponse({"detail": detail}, status_code=400)
    errors = _one_union_member(errors, exc.body)
    # Only where, what and why: echoing the input back could hold values JSON cannot carry (NaN).
    brief = [
        {"loc": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body", "msg": capped(str(e.get("msg")))}
        for e in errors[:MAX_ERRORS]
    ]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in brief)
    if len(errors) > MAX_ERRORS:
        detail += f"; and {len(errors) - MAX_ERRORS} more"
    return JSONResponse({"detail": capped(detail), "errors": brief}, status_code=422)


def _one_union_member(errors: Sequence[Any], body: Any) -> Sequence[Any]:
    """For a body that may be one event or a list of them, report only the shape that was sent."""
    tags = {e["loc"][1] for e in errors if len(e.get("loc", ())) > 1 and e["loc"][0] == "body"}
    single, many = "FeedbackEvent", "list[FeedbackEvent]"
    if not {single, many} <= tags:
        return errors
    keep = many if isinstance(body, list) else single
    return [{**e, "loc": ("body", *e["loc"][2:])} for e in errors if e["loc"][1] == keep]


def lmrec_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, NotFound):
        status = 404
    elif isinstance(exc, DataError | ConfigError):
        status = 422
    elif isinstance(exc, StoreUnavailable):  # the server's trouble, not the client's
        status = 503
    else:
        status = 400
    return JSONResponse({"detail": capped(sendable(str(exc)))}, status_code=status)


def http_error(request: Request, exc: Exception) -> JSONResponse:
    """An ``HTTPException`` (ours, or the router's 404 and 405) as FastAPI answers it, its detail cut short."""
    assert isinstance(exc, HTTPException)
    detail = capped(exc.detail) if isinstance(exc.detail, str) else exc.detail
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


__all__ = ["MAX_ERRORS", "capped", "http_error", "lmrec_error", "sendable", "validation_error"]
