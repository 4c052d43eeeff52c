"""What the service may store, and how a stored record is read back: the one rule for every writer.

An ID (:func:`id_problem`) is 1 to 256 printable characters without ``/`` (so it can be read back as
one URL path segment) and is not ``.`` or ``..``; a text (:func:`text_problem`: a title, a field) is
any string that UTF-8 and both databases can hold (no lone surrogate, no NUL); a timestamp is finite,
from 0 (1970) to ``MAX_TIMESTAMP`` (the end of year 9999).

An item's fields have declared types (:func:`item_field_problem`): ``genres`` and ``categories`` are
a list of strings or one string (``"Drama|War"``), ``year`` an integer from ``MIN_YEAR`` to
``MAX_YEAR``, and every other (free-form) field a string. The service refuses anything else at its
boundary (422 naming the field) and the stores refuse it again. A store written by an older version
may still hold records of other shapes: :func:`readable_item` reads such a record without the fields
it cannot read (and logs it), so no stored record can make a request fail.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmrec.errors import DataError

MAX_ID = 256  # characters in a user or item ID
MAX_DEPTH = 16  # nesting of a JSON value read back from an older store (a list in a dict in a list ...)
MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z, in seconds since the epoch
MIN_YEAR, MAX_YEAR = 1, 9999  # an item's year
LIST_FIELDS = ("genres", "categories")  # a list of strings, or one string with '|' between names
MAX_REPORTED = 1024  # malformed stored records logged once each, per store


@dataclass(frozen=True)
class Event:
    """One interaction reported to the service (raw IDs, seconds since the epoch)."""

    user: str
    item: str
    type: str = "click"
    timestamp: float | None = None  # when it happened; None: when it was received
    received_at: float | None = None
    id: int | None = None


@dataclass(frozen=True)
class Item:
    """An item added or updated at serve time: a title and any other text fields."""

    item: str
    title: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    updated_at: float | None = None


# -- what may be stored ---------------------------------------------------------------------------
def id_problem(value: object, limit: int = MAX_ID) -> str | None:
    """Why ``value`` cannot be an ID, or None when it can: the one rule for every ID the service takes.

    An ID is 1 to ``limit`` printable characters (:meth:`str.isprintable`: no control, format,
    surrogate, private-use or unassigned code point, no space other than U+0020), without ``/``, and
    not ``.`` or ``..`` — so that every ID can be sent back as one segment of a URL path.
    """
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > limit:
        return f"must be at most {limit} characters (got {len(value)})"
    if "/" in value:
        return "must not contain '/'"
    if value in (".", ".."):
        return f"must not be {value!r}"
    if not value.isprintable():
        at = next(i for i, c in enumerate(value) if not c.isprintable())
        return f"must be printable characters (U+{ord(value[at]):04X} at position {at} is not)"
    return None


def text_problem(value: str) -> str | None:
    """Why a text (a title, an item field) cannot be stored, or None: no lone surrogate, no NUL."""
    if "\x00" in value:
        return f"must not contain NUL (U+0000, at position {value.index(chr(0))})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"must be valid Unicode (a lone surrogate U+{ord(value[err.start]):04X} at position {err.start})"
    return None


def fields_problem(value: Any, depth: int = 0) -> str | None:
    """Why a JSON value (a free-form field an older store holds) cannot be sent back as JSON, or None."""
    if depth > MAX_DEPTH:
        return f"nest deeper than {MAX_DEPTH} levels"
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"hold a number that is not finite ({value})"
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, list | tuple):
        return next((p for v in value if (p := fields_problem(v, depth + 1))), None)
    if isinstance(value, dict):
        for k, v in value.items():
            problem = text_problem(k) if isinstance(k, str) else "have a key that is not a string"
            if problem or (problem := fields_problem(v, depth + 1)):
                return problem
        return None
    return f"hold a {type(value).__name__}, which is not JSON"


def timestamp_problem(value: float) -> str | None:
    """Why ``value`` cannot be an event's time, or None."""
    if not (math.isfinite(value) and 0.0 <= value <= MAX_TIMESTAMP):
        return f"must be seconds since the epoch from 0 to {MAX_TIMESTAMP:.0f} (year 9999), got {value!r}"
    return None


def brief(value: str, limit: int = 64) -> str:
    """``value`` as a quoted literal for a message or a log, cut to about ``limit`` characters."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def check_events(events: Sequence[Event]) -> None:
    """Raise :class:`DataError` for the first event the store may not hold."""
    for n, e in enumerate(events):
        for name, problem in (
            ("user", id_problem(e.user)),
            ("item", id_problem(e.item)),
            ("type", id_problem(e.type, 32)),
            ("timestamp", None if e.timestamp is None else timestamp_problem(float(e.timestamp))),
        ):
            if problem:
                raise DataError(f"event {n}: {name} {problem}")


def check_items(items: Sequence[Item]) -> None:
    """Raise :class:`DataError` for the first item the store may not hold."""
    for n, it in enumerate(items):
        problem = id_problem(it.item)
        if problem:
            raise DataError(f"item {n}: item {problem}")
        if it.title is not None and (problem := text_problem(it.title)):
            raise DataError(f"item {n} ({it.item!r}): title {problem}")
        if not isinstance(it.fields, dict):
            raise DataError(f"item {n} ({it.item!r}): fields must be an object, got {_kind(it.fields)}")
        for name, value in it.fields.items():
            if problem := (text_problem(name) if isinstance(name, str) else "must be a string"):
                raise DataError(f"item {n} ({it.item!r}): a field's name {problem}")
            if problem := item_field_problem(name, value):
                raise DataError(f"item {n} ({it.item!r}): field {brief(name, 40)} {problem}")


def _kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (without printing it: it may be huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def item_field_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the item field ``name``, or None: the declared types of item fields."""
    if name in LIST_FIELDS:
        if isinstance(value, str):
            return text_problem(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return next((p for v in value if (p := text_problem(v))), None)
        return f"must be a list of strings or one string, got {_kind(value)}"
    if name == "year":
        if isinstance(value, int) and not isinstance(value, bool) and MIN_YEAR <= value <= MAX_YEAR:
            return None
        got = "an integer out of range" if isinstance(value, int) and not isinstance(value, bool) else _kind(value)
        return f"must be an integer from {MIN_YEAR} to {MAX_YEAR}, got {got}"
    if isinstance(value, str):
        return text_problem(value)
    return f"must be a string, got {_kind(value)}"


def _legacy_year(value: Any) -> Any:
    """A year as an older store may hold it (``"1995"``, ``1995.0``) as an int; anything else unchanged."""
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 4:
        return int(value.strip())
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _readable_extra(value: Any) -> bool:
    """Whether a free-form field an older store holds can still be sent as JSON (it is not refused on
    read just for not being a string: it was accepted when it was written)."""
    return fields_problem(value) is None


def readable_item(
    item: str, title: Any, fields: Any, updated: float | None, reported: set[tuple[str, float | None]] | None = None
) -> Item:
    """An :class:`Item` from a stored row (``fields``: its JSON text, or the parsed value), without what
    cannot be read: a title that is not text, fields that are not a JSON object, a declared field of the
    wrong type, a free-form field JSON cannot carry. What was left out is logged, once per record
    version when ``reported`` (a set the caller keeps) is given."""
    dropped: list[str] = []
    if title is not None and (not isinstance(title, str) or text_problem(title)):
        title, dropped = None, ["title"]
    try:
        parsed = json.loads(fields) if isinstance(fields, str | bytes) else fields
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        parsed, dropped = {}, [*dropped, "fields (not a JSON object)"]
    clean: dict[str, Any] = {}
    for name, value in parsed.items():
        if name == "year":
            value = _legacy_year(value)
        if name in LIST_FIELDS or name == "year":
            ok = item_field_problem(name, value) is None
        else:
            ok = isinstance(name, str) and _readable_extra(value)
        if ok:
            clean[name] = value
        else:
            dropped.append(repr(name)[:40])
    if dropped and (reported is None or (item, updated) not in reported):
        if reported is not None and len(reported) < MAX_REPORTED:
            reported.add((item, updated))
        logging.getLogger("uvicorn.error").warning(
            "stored item %s holds what cannot be read, served without it: %s", brief(item), ", ".join(dropped)
        )
    return Item(item, title, clean, updated)
