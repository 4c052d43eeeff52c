"""Item text built from catalog columns by a template.

A template is a ``str.format`` string over any catalog columns: ``"{title}"``, ``"{keywords}"``,
``"{title} | {brand} | {categories}"``. List values (categories, tags) are joined with ", ". A
missing value is dropped together with the separator in front of it (the text between it and the
previous field; for the first field, the text after it), so ``"{title} | {brand} | {categories}"``
reads "Lipstick | Red" for an item without a brand, and an item with no value at all gets "". A
title equal to the item's ID (what a catalog without titles gets, for display) counts as missing:
IDs are not text.

Which template a model reads is chosen once, when it is fitted (:func:`choose_template`), and saved
with its config, so items added later (the service, ``lmrec.newitems``) render the same way: the
model's ``text_template`` if set, else the dataset's (``lmrec train --text-template``), else an
automatic choice: :data:`DEFAULT_TEMPLATE` (title, year, genres, description) when the catalog has
titles, else the first column of :data:`TEXT_FALLBACK` that holds text. A catalog with no text at
all is an error, never item IDs read as text.
"""

from __future__ import annotations

import contextlib
import re
import string
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lmrec.errors import ConfigError

if TYPE_CHECKING:
    from lmrec.data.schema import Dataset

DEFAULT_TEMPLATE = "{title}{year_part}. {categories_part}{description}"
TEXT_COLUMNS = ("description", "text", "overview", "plot", "summary")  # the default's {description}
# Without titles, the automatic template reads the first of these that holds text (``name`` and
# ``product_title`` become ``title`` when a file is loaded; a frame built in Python may keep them).
TEXT_FALLBACK = ("name", "keywords", "description", "text", "overview", "plot", "summary", "tags", "categories")
# Computed fields of the default template: always rendered in place, with the text around them.
_COMPUTED = ("year_part", "categories_part", "description")


class TemplateError(ConfigError, KeyError):
    """A template that names columns the catalog lacks (a KeyError too, as it always was)."""

    __str__ = Exception.__str__  # KeyError would quote the message


class NoItemTextError(ConfigError):
    """A text-reading model was given a catalog with no item text (only IDs)."""


def choose_template(
    data: Dataset | pd.DataFrame, template: str | None = None, *, default: str = DEFAULT_TEMPLATE
) -> str:
    """The template a text-reading model renders ``data``'s catalog with: ``template`` if given,
    else the dataset's own (``meta["text_template"]``), else the automatic choice (``default`` when
    the catalog has titles, else the first :data:`TEXT_FALLBACK` column with text).

    Raises :class:`TemplateError` for a template naming columns the catalog lacks and
    :class:`NoItemTextError` when it would render no text for any item, naming the columns found.
    """
    catalog = data if isinstance(data, pd.DataFrame) else data.catalog
    where = "the catalog" if isinstance(data, pd.DataFrame) else f"the catalog of {data.name}"
    if template is None and not isinstance(data, pd.DataFrame):
        template = data.meta.get("text_template")
    if template is None:
        chosen = _automatic(catalog, default)
        if chosen is None:
            raise NoItemTextError(_no_text(catalog, where, None))
        return chosen
    _check_fields(catalog, template)
    text_col = next((c for c in TEXT_COLUMNS if c in catalog.columns), "description")
    sources = {"year_part": "year", "categories_part": "categories", "description": text_col}
    read = {sources.get(f, f) for f in _fields(template)} & set(map(str, catalog.columns))
    if not any(_has_text(catalog, c) for c in read):
        raise NoItemTextError(_no_text(catalog, where, template))
    return template


def item_texts(catalog: pd.DataFrame, template: str | None = None, max_chars: int = 1000) -> list[str]:
    """One text per catalog row, rendered by ``template`` (see the module docstring).

    ``None`` renders the automatic choice, :data:`DEFAULT_TEMPLATE` where the catalog has titles:
    "Toy Story (1995). Genres: Animation, Comedy. <description>". A template naming a column the
    catalog lacks raises :class:`TemplateError` (``title`` may be absent: frames of new items). A row
    the template leaves empty reads its title if it has one (a new item given only a title), else "",
    never its ID.
    """
    if template is None:
        template = _automatic(catalog, DEFAULT_TEMPLATE) or DEFAULT_TEMPLATE
    _check_fields(catalog, template)
    tokens = _parse(template)
    text_col = next((c for c in TEXT_COLUMNS if c in catalog.columns), None)
    out = []
    for row in catalog.to_dict("records"):
        values = {str(k): _clean(v) for k, v in row.items()}
        title = values.get("title", "")
        if title and title == values.get("item"):  # an ID standing in for a missing title
            values["title"] = title = ""
        year = values.get("year", "")
        values["year_part"] = f" ({year})" if year and year not in title and year.isdigit() else ""
        cats = values.get("categories", "")
        values["categories_part"] = f"Genres: {cats}. " if cats else ""
        values.setdefault("description", values.get(text_col, "") if text_col else "")
        text = _LEFTOVER.sub("", re.sub(r"\s+", " ", _render(tokens, values)).strip()) or title
        out.append(text[:max_chars])
    return out


def item_names(data: Dataset) -> list[str]:
    """What to call each item in a sentence (explanations): its title; where the catalog has no
    titles, its text by the dataset's template or the automatic one; its ID where it has no text."""
    catalog = data.catalog
    if "title" in catalog.columns and _has_text(catalog, "title"):
        return data.titles(range(data.n_items))
    try:
        texts = item_texts(catalog, choose_template(data, None, default="{title}"))
    except NoItemTextError:
        return data.titles(range(data.n_items))
    return [t or raw for t, raw in zip(texts, data.items.ids, strict=True)]


# -- choosing -------------------------------------------------------------------------------------


def _automatic(catalog: pd.DataFrame, default: str) -> str | None:
    """``default`` for a catalog with titles, else the first text column of TEXT_FALLBACK (with the
    categories after it when there are any); None when no column holds text."""
    if "title" in catalog.columns and _has_text(catalog, "title"):
        return default
    for column in TEXT_FALLBACK:
        if column in catalog.columns and _has_text(catalog, column):
            if column != "categories" and "categories" in catalog.columns and _has_text(catalog, "categories"):
                return f"{{{column}}} | {{categories}}"
            return f"{{{column}}}"
    return None


def _has_text(catalog: pd.DataFrame, column: str) -> bool:
    """Whether any row has a value in ``column`` (a title equal to its item ID does not count)."""
    if column == "title" and "item" in catalog.columns:
        return any(t and t != _clean(i) for t, i in zip(map(_clean, catalog["title"]), catalog["item"], strict=True))
    return any(_clean(v) for v in catalog[column])


def _no_text(catalog: pd.DataFrame, where: str, template: str | None) -> str:
    """The error for a catalog without item text: what each column holds and how to name text."""
    found = []
    for column in map(str, catalog.columns):
        if column == "item":
            continue
        if _has_text(catalog, column):
            found.append(column)
        else:
            ids = column == "title" and any(_clean(v) for v in catalog[column])
            found.append(f"{column} ({'only item IDs' if ids else 'empty'})")
    rendered = f"template {template!r} renders no text for any item" if template else "it has no item text"
    other = [
        str(c)
        for c in catalog.columns
        if c not in ("item", "title", "categories")
        and pd.api.types.is_string_dtype(catalog[c])
        and _has_text(catalog, str(c))
    ]
    example = "{" + (other[0] if other else "keywords") + "}"
    return (
        f"a text model cannot read {where}: {rendered}, and item IDs are not text. Its columns: "
        f"{', '.join(found) or 'none besides item'}. Name the text column(s) with a template, "
        f"e.g. `lmrec train --text-template '{example}'` (or --set text_template='{example}'; any "
        "columns, e.g. '{title} | {brand} | {categories}'), add such a column to the item table, "
        "or train a model that reads only IDs (sasrec)"
    )


def _check_fields(catalog: pd.DataFrame, template: str) -> None:
    fields = _fields(template)
    if "" in fields:
        raise TemplateError(f"text template {template!r} has an empty field {{}}; name a column, e.g. {{title}}")
    known = (*_COMPUTED, "description", "title")  # every catalog has a title; new items' frames may not
    unknown = sorted(f for f in fields if f not in catalog.columns and f not in known)
    if unknown:
        raise TemplateError(
            f"text template {template!r} names {unknown}, which are not catalog columns; "
            f"the columns are {[str(c) for c in catalog.columns]}"
        )


# -- rendering ------------------------------------------------------------------------------------

_Token = str | tuple[str, str]  # a literal, or a field (name, format spec)
_LEFTOVER = re.compile(r"^[.,;:|]+\s+")  # a separator left in front by a missing first value (". Genres: ...")


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _parse(template: str) -> list[_Token]:
    """Literals (adjacent ones merged) and fields, in template order."""
    tokens: list[_Token] = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        if literal:
            if tokens and isinstance(tokens[-1], str):
                tokens[-1] += literal
            else:
                tokens.append(literal)
        if name is not None:
            tokens.append((name, spec or ""))
    return tokens


def _render(tokens: list[_Token], values: dict[str, str]) -> str:
    """Fill the fields; drop each empty column field with the separator before it (after it, for
    the first field). Computed fields stay in place with the text around them. No value: ""."""
    parts: list[tuple[str, str]] = []  # (kind, text): "literal", "column" or "computed"
    for token in tokens:
        if isinstance(token, str):
            parts.append(("literal", token))
            continue
        name, spec = token
        value = values.get(name, "")
        if spec and value:
            with contextlib.suppress(ValueError):  # a number's spec on text: the text as it is
                value = format(value, spec)
        parts.append(("computed" if name in _COMPUTED else "column", value))
    if not any(kind != "literal" and text for kind, text in parts):
        return ""
    while (empty := next((i for i, (k, t) in enumerate(parts) if k == "column" and not t), None)) is not None:
        field_before = any(k != "literal" for k, _ in parts[: max(empty - 1, 0)])
        field_after = any(k != "literal" for k, _ in parts[empty + 2 :])
        if empty > 0 and parts[empty - 1][0] == "literal" and field_before:
            del parts[empty - 1 : empty + 1]
        elif empty + 1 < len(parts) and parts[empty + 1][0] == "literal" and field_after and not field_before:
            del parts[empty : empty + 2]
        else:
            del parts[empty]
    return "".join(text for _, text in parts)


def _clean(value: object) -> str:
    """A cell as text: lists joined with ", ", missing values "", whole floats without ".0"."""
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(s for s in (_clean(v) for v in value) if s)
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float | np.floating):
        if value != value:
            return ""
        if float(value).is_integer():
            return str(int(value))
    return str(value).strip()


# Articles that catalogs (MovieLens above all) move to the end for sorting: "Lion King, The".
MOVED_ARTICLES = ("The", "A", "An", "L'", "Le", "La", "Les", "Il", "Das", "Der", "Die", "El")
_ARTICLE = "|".join(re.escape(a) for a in MOVED_ARTICLES)
_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)$")
_MOVED = re.compile(rf"^(?P<main>.+?), (?P<article>{_ARTICLE})(?P<rest>(?: \([^()]*\))*)$")
_MOVED_IN_PARENS = re.compile(rf"\((?P<main>[^()]+?), (?P<article>{_ARTICLE})\)")


def spoken_title(title: str, article: bool = True) -> str:
    """A catalog title as people say it in a sentence: the trailing "(year)" dropped and a moved
    article put back in front, in the title and in an alternate title in parentheses.

    "Lion King, The (1994)" → "The Lion King"; "Amour, L'" → "L'Amour";
    "Horseman on the Roof, The (Hussard sur le toit, Le)" → "The Horseman on the Roof (Le Hussard
    sur le toit)". ``article=False`` leaves a moved article out ("Lion King"), the core a reader may
    also write. Titles without a moved article keep their words as they are.
    """
    text = " ".join(str(title).split())
    text = _TRAILING_YEAR.sub("", text) or text
    text = _MOVED_IN_PARENS.sub(lambda m: f"({_front(m['article'], m['main'])})", text)
    moved = _MOVED.match(text)
    if moved is None:
        return text
    main = _front(moved["article"], moved["main"]) if article else moved["main"]
    return main + moved["rest"]


def _front(article: str, main: str) -> str:
    return article + main if article.endswith("'") else f"{article} {main}"
