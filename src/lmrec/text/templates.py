"""Item text built from catalog fields by a template."""

from __future__ import annotations

import re
import string

import pandas as pd

DEFAULT_TEMPLATE = "{title}{year_part}. {categories_part}{description}"
TEXT_COLUMNS = ("description", "text", "overview", "plot", "summary")


def item_texts(catalog: pd.DataFrame, template: str | None = None, max_chars: int = 1000) -> list[str]:
    """One text per catalog row.

    The default template reads ``title``, ``year``, ``categories`` and the first text column found
    (description, text, overview, ...): "Toy Story (1995). Genres: Animation, Comedy. ...". A custom
    template is a ``str.format`` string over any catalog column, e.g. ``"{title} by {brand}"``;
    missing values become empty strings.
    """
    fields = _fields(template or DEFAULT_TEMPLATE)
    unknown = sorted(f for f in fields if f not in catalog.columns and not f.endswith("_part") and f != "description")
    if template is not None and unknown:
        raise KeyError(f"template fields {unknown} are not catalog columns; columns are {list(catalog.columns)}")
    text_col = next((c for c in TEXT_COLUMNS if c in catalog.columns), None)
    out = []
    for row in catalog.to_dict("records"):
        values = {str(k): _clean(v) for k, v in row.items()}
        year = values.get("year", "")
        title = values.get("title", "")
        values["year_part"] = f" ({year})" if year and year not in title and year.isdigit() else ""
        cats = row.get("categories") or []
        values["categories_part"] = f"Genres: {', '.join(map(str, cats))}. " if len(cats) else ""
        values.setdefault("description", values.get(text_col, "") if text_col else "")
        text = (template or DEFAULT_TEMPLATE).format_map(_Blank(values))
        out.append(re.sub(r"\s+", " ", text).strip()[:max_chars])
    return out


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _clean(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


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
