"""API-key checks, free of any web framework.

A request carries its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Scopes:
``read`` (recommend, history, items), ``write`` (feedback, items), ``admin`` (reload, keys;
an admin key may also read and write).
"""

from __future__ import annotations

from collections.abc import Mapping

from lmrec.serve.store import EventStore


class AuthError(Exception):
    """A request that may not proceed: ``status`` is 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key a request presents, or None. Header names are matched case-insensitively."""
    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization", "").strip()
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = lower.get("x-api-key", "").strip()
    return key or None


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
