"""Feature tables built from a frame's columns: one row per item (or user), blocks side by side.

A spec names the blocks, e.g. ``"text,genres,year,image"``:

* ``text`` — the item text, as the model's text template renders it (:mod:`lmrec.text.templates`;
  title, year, genres, description by default), through a sentence encoder, unit rows;
* ``image`` — a column of image file paths (``image``, ``image_path`` or ``images``) through an image
  encoder (:mod:`lmrec.features.images`), centred on the catalog's mean and scaled to unit rows;
* any other name is a column: multi-hot over its values when they are strings or lists
  (``genres`` reads ``categories``), a standardised number when every value is one (``year``,
  ``price``, ``age``); ``cat:NAME`` / ``num:NAME`` force the kind.

Each block is scaled so that a present row has norm about 1, whatever its width, and each block has
a presence column (1: the row has a value; 0: missing, its block is zeros). The table is
``[text | attributes | image | presence]``. What the table was fitted on (vocabularies, means and
deviations, the image mean, the encoders' names) is a :class:`FeatureSchema` that round-trips
through JSON, so rows added later (cold items) are built exactly like the fitted ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lmrec.errors import ConfigError, DataError

ALIASES = {"genres": "categories", "genre": "categories"}
IMAGE_COLUMNS = ("image", "image_path", "images")
KINDS = ("text", "categorical", "numeric", "image")
MAX_VALUES = 1000  # a categorical block keeps at most this many (most frequent) values
CLIP = 5.0  # standardised numbers are clipped to ±CLIP deviations


@dataclass(frozen=True)
class FeatureSpec:
    """One requested block: its name in the spec, the column it reads and a forced kind (or None)."""

    name: str
    column: str | None
    kind: str | None  # None: decided from the column's values when fitting
    model: str | None = None  # image:PATH — a local EfficientNet-Lite0 weights file


def parse_spec(spec: str) -> list[FeatureSpec]:
    """``"text,genres,year,image"`` → one :class:`FeatureSpec` per block; raises ConfigError for a
    spec that cannot be a feature list (empty, repeated names)."""
    out: list[FeatureSpec] = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        if raw == "text":
            out.append(FeatureSpec("text", None, "text"))
        elif raw == "image" or raw.startswith("image:"):
            out.append(FeatureSpec("image", None, "image", raw.partition(":")[2] or None))
        elif raw.startswith(("cat:", "num:")):
            prefix, _, column = raw.partition(":")
            if not column:
                raise ConfigError(f"item feature {raw!r} names no column")
            out.append(
                FeatureSpec(column, ALIASES.get(column, column), "categorical" if prefix == "cat" else "numeric")
            )
        else:
            out.append(FeatureSpec(raw, ALIASES.get(raw, raw), None))
    names = [s.name for s in out]
    if not out:
        raise ConfigError(f"item_features {spec!r} names no feature; e.g. 'text' or 'text,genres,year,image'")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"item_features {spec!r} names {repeated} twice")
    return out


@dataclass
class Block:
    """A fitted block: where it sits in the table and what it needs to build rows the same way."""

    name: str
    kind: str
    column: str | None = None
    width: int = 0
    values: list[str] = field(default_factory=list)  # categorical: the vocabulary, in column order
    mean: float = 0.0  # numeric
    std: float = 1.0
    center: list[float] = field(default_factory=list)  # image: the catalog's mean vector
    encoder: str | None = None  # text/image: the encoder's name (its vectors only mean something to it)
    model: str | None = None  # image: a local weights file (None: the packaged EfficientNet-Lite0)


@dataclass
class FeatureSchema:
    """The fitted blocks of a feature table, in table order; presence columns follow them."""

    blocks: list[Block]

    @property
    def dim(self) -> int:
        return sum(b.width for b in self.blocks) + len(self.blocks)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def block(self, name: str) -> Block | None:
        return next((b for b in self.blocks if b.name == name), None)

    def slices(self) -> dict[str, slice]:
        """Columns of each block's values, and ``"presence:NAME"`` for its presence column."""
        out, start = {}, 0
        for b in self.blocks:
            out[b.name] = slice(start, start + b.width)
            start += b.width
        for b in self.blocks:
            out[f"presence:{b.name}"] = slice(start, start + 1)
            start += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": [dataclasses.asdict(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureSchema:
        names = {f.name for f in dataclasses.fields(Block)}
        blocks = []
        for raw in values["blocks"]:
            unknown = sorted(set(raw) - names)
            if unknown or raw.get("kind") not in KINDS:
                raise ConfigError(f"not an item feature block: {raw.get('name')!r} (fields {sorted(raw)})")
            blocks.append(Block(**raw))
        return cls(blocks)


@dataclass
class FeatureTable:
    """Rows of features (float32, ``schema.dim`` wide), which rows have each block, and what it cost."""

    values: np.ndarray
    schema: FeatureSchema
    present: dict[str, np.ndarray]  # block name → bool per row
    seconds: dict[str, float] = field(default_factory=dict)  # encoding time per encoded block

    def summary(self) -> str:
        n = len(self.values)
        parts = [f"{name} {int(mask.sum())}/{n}" for name, mask in self.present.items()]
        return f"features ({self.schema.dim} columns): " + ", ".join(parts)


# An encoder callback: the rows' vectors (n, d), which rows have a value, and the encoder's name.
Encode = Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray, str]]


def build_table(
    frame: pd.DataFrame,
    spec: str | FeatureSchema,
    encoders: dict[str, Encode] | None = None,
    *,
    where: str = "catalog",
) -> FeatureTable:
    """The feature table of ``frame``'s rows. ``spec`` is a feature list to fit on this frame, or a
    fitted :class:`FeatureSchema` to build rows exactly as it says (new items). ``encoders`` maps
    ``"text"`` / ``"image"`` to callbacks that return (vectors, present, encoder name)."""
    encoders = encoders or {}
    fitting = not isinstance(spec, FeatureSchema)
    if isinstance(spec, FeatureSchema):
        wanted = [FeatureSpec(b.name, b.column, b.kind, b.model) for b in spec.blocks]
        fitted: dict[str, Block] = {b.name: b for b in spec.blocks}
    else:
        wanted, fitted = parse_spec(spec), {}
    n = len(frame)
    parts: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    blocks: list[Block] = []
    for s in wanted:
        block = fitted.get(s.name)
        if s.kind in ("text", "image"):
            if s.kind not in encoders:
                raise ConfigError(f"the {s.kind!r} block needs a {s.kind} encoder")
            t0 = time.perf_counter()
            vectors, has, name = encoders[s.kind](frame)
            seconds[s.kind] = time.perf_counter() - t0
            vectors, has = np.asarray(vectors, np.float32).reshape(n, -1), np.asarray(has, bool)
            if block is None:
                center = vectors[has].mean(0) if s.kind == "image" and has.any() else np.zeros(0, np.float32)
                block = Block(s.name, s.kind, width=vectors.shape[1], center=center.tolist(), encoder=name)
                block.model = s.model
            elif block.encoder != name or vectors.shape[1] != block.width:
                raise ConfigError(
                    f"the {s.kind} block was fitted with {block.encoder} ({block.width} wide); "
                    f"got {name} ({vectors.shape[1]} wide)"
                )
            if block.center:
                vectors = vectors - np.asarray(block.center, np.float32)
            parts[s.name], present[s.name] = _unit_rows(vectors) * has[:, None], has
        else:
            column = s.column or s.name
            if column not in frame.columns:
                if block is None:
                    raise DataError(f"no column {column!r} for feature {s.name!r}; columns are {list(frame.columns)}")
                values = pd.Series([None] * n, name=column, dtype=object)  # rows added later may lack it
            else:
                values = frame[column]
            if block is None:
                block = _fit_column(s, values, where)
            parts[s.name], present[s.name] = _column_rows(block, values, where)
        blocks.append(block)
    # [text | attributes | image], the spec's order within each group; then one presence column each
    order = {"text": 0, "categorical": 1, "numeric": 1, "image": 2}
    if fitting:
        blocks.sort(key=lambda b: order[b.kind])
    schema = spec if isinstance(spec, FeatureSchema) else FeatureSchema(blocks)
    columns = [parts[b.name] for b in schema.blocks] + [present[b.name][:, None] for b in schema.blocks]
    table = np.concatenate([c.astype(np.float32) for c in columns], axis=1)
    return FeatureTable(table, schema, {b.name: present[b.name] for b in schema.blocks}, seconds)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and not value.strip()


def _row_values(value: object) -> list[str]:
    """A cell's categorical values: a list's items, or the one scalar (none when missing)."""
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v).strip() for v in value if not _is_missing(v)]
    return [] if _is_missing(value) else [str(value).strip()]


def _numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, present): numbers where a cell is one, NaN and False where it is missing."""
    missing = np.array([_is_missing(v) for v in column], bool)
    values = pd.to_numeric(column.where(~missing, None).astype(object), errors="coerce").to_numpy(np.float64)
    return values, ~missing


def _fit_column(s: FeatureSpec, column: pd.Series, where: str) -> Block:
    kind = s.kind
    if kind is None:
        lists = any(isinstance(v, list | tuple | np.ndarray) for v in column)
        values, has = _numbers(column) if not lists else (np.zeros(0), np.zeros(0, bool))
        kind = "numeric" if not lists and has.any() and bool(np.isfinite(values[has]).all()) else "categorical"
    if kind == "numeric":
        values, has = _numbers(column)
        bad = has & ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"not a number: {column.iloc[row]!r}", path=where, line=row + 1, column=str(column.name))
        known = values[has]
        mean = float(known.mean()) if len(known) else 0.0
        std = float(known.std()) if len(known) > 1 else 1.0
        return Block(s.name, "numeric", str(column.name), 1, mean=mean, std=std if std > 0 else 1.0)
    counts = pd.Series([v for cell in column for v in _row_values(cell)], dtype=object).value_counts(sort=False)
    kept = counts.sort_values(ascending=False, kind="stable").index[:MAX_VALUES]
    vocab = sorted(str(v) for v in kept)
    return Block(s.name, "categorical", str(column.name), len(vocab), values=vocab)


def _column_rows(block: Block, column: pd.Series, where: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(column)
    if block.kind == "numeric":
        values, has = _numbers(column)
        bad = has & ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"not a number: {column.iloc[row]!r}", path=where, line=row + 1, column=str(column.name))
        z = np.clip((np.where(has, values, block.mean) - block.mean) / block.std, -CLIP, CLIP)
        return z.reshape(n, 1).astype(np.float32), has
    index = {v: i for i, v in enumerate(block.values)}
    out = np.zeros((n, block.width), np.float32)
    for row, cell in enumerate(column):
        for v in _row_values(cell):
            col = index.get(v)
            if col is not None:
                out[row, col] = 1.0
    has = out.sum(1) > 0
    return _unit_rows(out), has
