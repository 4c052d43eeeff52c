"""API-key checks, free of any web framework.

A request carries its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, once. What
could be read two ways is refused rather than guessed at: two ``Authorization`` or two ``X-API-Key``
headers, or both headers with different keys, are a 400; an ``Authorization`` header with another
scheme (``Basic ...``) is a 401 that says so, not a silent fall-back to ``X-API-Key``. Scopes:
``read`` (recommend, history, items), ``write`` (feedback, items), ``admin`` (reload, keys;
an admin key may also read and write).
"""

from __future__ import annotations

from collections.abc import Iterable

from lmrec.serve.store import EventStore

BEARER = "bearer"


class AuthError(Exception):
    """A request that may not proceed: ``status`` is 400 (ambiguous), 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def key_from_headers(headers: Iterable[tuple[str, str]]) -> str | None:
    """The key a request presents, or None; ``headers`` are all of its (name, value) pairs, repeats
    included (Starlette's ``request.headers.items()``). Names are matched case-insensitively."""
    found: dict[str, list[str]] = {"authorization": [], "x-api-key": []}
    for name, value in headers:
        if name.lower() in found:
            found[name.lower()].append(value.strip())
    for name, values in found.items():
        if len(values) > 1:
            raise AuthError(400, f"{len(values)} {name!r} headers: send the key once")
    bearer = None
    if found["authorization"]:
        scheme, _, token = found["authorization"][0].partition(" ")
        if scheme.lower() != BEARER:
            shown = scheme[:20] if scheme.isascii() and scheme.isprintable() else "?"
            raise AuthError(401, f"unsupported Authorization scheme {shown!r}: send 'Authorization: Bearer <key>'")
        bearer = token.strip() or None
        if bearer is None:
            raise AuthError(401, "empty bearer token: send 'Authorization: Bearer <key>'")
    api_key = found["x-api-key"][0] if found["x-api-key"] and found["x-api-key"][0] else None
    if bearer is not None and api_key is not None and bearer != api_key:
        raise AuthError(400, "two different keys (Authorization and X-API-Key): send one")
    return bearer or api_key


def authorize(store: EventStore, key: str | None, scope: str) -> frozenset[str]:
    """The key's scopes if it may use ``scope``; raises :class:`AuthError` otherwise."""
    if key is None:
        raise AuthError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    scopes = store.verify_key(key)
    if scopes is None:
        raise AuthError(401, "invalid or revoked API key")
    if scope not in scopes and "admin" not in scopes:
        raise AuthError(403, f"this API key lacks the {scope!r} scope (it has {sorted(scopes)})")
    return scopes
