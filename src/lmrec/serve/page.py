"""The demo page's own routes: its static files (script, style, icon) and the config it reads before
its first call. What it shows of each recommended item comes from the API (:mod:`lmrec.serve.describe`)."""

from __future__ import annotations

from importlib import resources

from lmrec.errors import MissingExtraError

try:
    from fastapi import APIRouter, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
except ImportError as exc:  # pragma: no cover - app.py, which imports this module, reports it first
    raise MissingExtraError("fastapi", "serve") from exc

# The page's files: fixed names and types, read once. Nothing else under static/ is served.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)
_FILES: dict[str, bytes] = {}


@router.get("/static/{name}")
def asset(name: str) -> Response:
    """One of the page's files (the page loads its script and style from here: no inline code, so it
    runs under a ``script-src 'self'`` Content-Security-Policy)."""
    media = ASSETS.get(name)
    if media is None:
        raise HTTPException(404, f"no static file {name!r}")
    body = _FILES.get(name)
    if body is None:
        body = _FILES[name] = resources.files("lmrec.serve").joinpath("static", name).read_bytes()
    return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("/page/config")
def page_config(request: Request) -> JSONResponse:
    """What the page must know before its first authorised call: whether it needs an API key."""
    return JSONResponse({"keys": bool(request.app.state.service.require_keys)})


__all__ = ["ASSETS", "router"]
