"""Items that no model has seen, known only by their text, added to a run for one request
(``lmrec recommend --new-item "Title|Genre1,Genre2"``).

A text-reading sequential model (``text-sasrec`` with ``item_repr`` text, fused or aligned) scores
such an item from its text embedding alone
(:meth:`~lmrec.models.sequential.SequentialRecommender.with_new_items`); this module encodes the
texts with the model's own item-text template and encoder, grows the model and the run's catalog
and vocabulary by those rows, and leaves the run on disk untouched. ID-based models cannot score
an item they never saw: they get a clear error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lmrec.errors import LmrecError
from lmrec.models.sequential import SequentialRecommender
from lmrec.runs import Run

if TYPE_CHECKING:
    from lmrec.text import TextEncoder

NEW_ID = "new-{}"  # raw IDs of the added items: new-1, new-2, ...


@dataclasses.dataclass(frozen=True)
class NewItem:
    item: str
    title: str
    categories: list[str]


def parse_new_item(text: str, index: int) -> NewItem:
    """``"Title|Genre1,Genre2"`` (genres optional) → a :class:`NewItem` with ID ``new-{index}``."""
    title, _, genres = text.partition("|")
    if not title.strip():
        raise LmrecError(f"--new-item {text!r}: expected 'Title|Genre1,Genre2' with a non-empty title")
    categories = [g.strip() for g in genres.split(",") if g.strip()]
    return NewItem(NEW_ID.format(index), title.strip(), categories)


def with_text_items(
    run: Run, items: list[NewItem], encoder: TextEncoder | None = None, cache_dir: Path | None = None
) -> Run:
    """A copy of ``run`` whose model, catalog and item vocabulary also hold ``items`` (rows after
    the trained ones). ``encoder`` defaults to the one the model was trained with; embeddings are
    cached under ``cache_dir/embeddings`` when given."""
    model, ds = run.model, run.dataset
    if not (isinstance(model, SequentialRecommender) and model.scores_new_items):
        raise LmrecError(
            f"a {run.meta['model']} run cannot score an item from its text alone; "
            "train text-sasrec (item_repr text, fused or aligned) for that"
        )
    taken = [it.item for it in items if it.item in ds.items]
    if taken:
        raise LmrecError(f"item id(s) {taken} already exist in the catalog")
    rows = pd.DataFrame([{"item": it.item, "title": it.title, "categories": it.categories} for it in items])
    rows = rows.reindex(columns=list(dict.fromkeys([*ds.catalog.columns, *rows.columns])))
    if encoder is None:
        from lmrec.text import load_encoder

        encoder = load_encoder(model.config.text_encoder, str(model.device))
    vectors = model.encode_items(rows, encoder, cache_dir / "embeddings" if cache_dir is not None else None)
    grown = model.with_new_items(vectors)
    catalog = pd.concat([ds.catalog, rows[list(ds.catalog.columns)]], ignore_index=True)
    dataset = dataclasses.replace(ds, items=ds.items.extended([it.item for it in items]), catalog=catalog)
    return Run(run.directory, run.meta, grown, dataclasses.replace(run.split, dataset=dataset))
