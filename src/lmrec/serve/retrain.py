"""Retraining on the service's feedback (``lmrec retrain``).

A new run is trained on an old run's data plus the events its store collected, with the old run's
model, configuration, seed and split, and written to a new directory; the service then swaps to it
(``POST /admin/reload``, or by itself under ``lmrec serve --watch``) without failing a request.

The new run holds the data it was trained on::

    NEW_RUN/data/interactions.parquet   the old run's interactions (its filters applied) + the events
    NEW_RUN/data/items.parquet          the old catalog + the items added with PUT /items
    NEW_RUN/data/users.parquet          user features, when the old data has some

Its recipe points at ``NEW_RUN/data`` with the old split, so ``lmrec evaluate --run NEW_RUN`` rebuilds
the split it was trained on. ``run.json`` records under ``"retrain"`` the run it came from, the store,
and the last store event it holds, so retraining a retrained run adds only newer events and the
service does not count trained-on events twice in a user's live history.

Events are implicit feedback: each becomes an interaction, its type in the ``event`` column. They carry
no rating, so when events are added a ``rating`` or ``weight`` column of the old data is left out (and
``run.json`` says so). The old run's filters were applied to its data; the events are not filtered, so
a brand-new user with one event is kept, except that ``dedupe`` applies to the whole log again.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmrec.data.schema import Dataset, Vocab
from lmrec.errors import ConfigError, LmrecError
from lmrec.models.base import FitOptions
from lmrec.runs import RUN_FILE, DataRecipe, Run, read_meta, run_dataset, run_version, train_run
from lmrec.serve.store import EventStore, Item, trained_through

DATA_DIR = "data"
TABLES = ("interactions", "items", "users")
UNRATED = ("rating", "weight")  # columns events have no value for


class ReloadFailed(LmrecError):
    """The service did not take the new run."""


@dataclass(frozen=True)
class RetrainData:
    """What a run is retrained on, as tables of raw IDs, and what was added (for ``run.json``)."""

    interactions: pd.DataFrame  # user, item, timestamp[, event][, rating, weight]; time order within each part
    items: pd.DataFrame  # the catalog: item, title, categories and any text fields
    users: pd.DataFrame | None  # user features, if any
    info: dict[str, Any]

    def dataset(self) -> Dataset:
        return Dataset.from_frame(self.interactions, self.items, name="retrain", user_features=self.users)

    def write(self, directory: Path) -> None:
        """Write the tables as Parquet into ``directory`` (a data directory ``lmrec.data.load`` reads)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, frame in zip(TABLES, (self.interactions, self.items, self.users), strict=True):
            path = directory / f"{name}.parquet"
            if frame is None:
                path.unlink(missing_ok=True)  # left by an earlier retrain into the same directory
            else:
                _to_parquet(frame, path)


def retrain_data(run_dir: Path, store: EventStore, cache_dir: Path) -> RetrainData:
    """The run's data (rebuilt from its recipe, as ``evaluate`` does) followed by the store's events that
    it does not hold yet, and its catalog with the items added at serve time."""
    run_dir = Path(run_dir)
    base = run_dataset(run_dir, cache_dir)
    after = trained_through(read_meta(run_dir), store)
    events = [e for e in store.all_events() if (e.id or 0) > after]
    frame = _raw_interactions(base)
    dropped: list[str] = []
    if events:
        dropped = [c for c in UNRATED if c in frame.columns]
        frame = frame.drop(columns=dropped)
        if "event" not in frame.columns:
            frame["event"] = ""  # the old data says nothing of the type
        added = pd.DataFrame(
            [(e.user, e.item, e.timestamp, e.type) for e in events], columns=["user", "item", "timestamp", "event"]
        )
        frame = pd.concat([frame, added], ignore_index=True)
    stored = store.items_updated_since(0.0)
    items = _with_stored_items(base.catalog, stored)
    all_items = Vocab(items["item"]).extended(frame["item"])
    info = {
        "from": str(run_dir.resolve()),
        "from_version": run_version(run_dir),
        "store": store.location,
        "events": len(events),
        "last_event_id": max((e.id or 0 for e in events), default=after),
        "new_users": len({e.user for e in events if e.user not in base.users}),
        "new_items": sum(1 for i in all_items.ids if i not in base.items),
        "stored_items": len(stored),
        "dropped_columns": dropped,
    }
    return RetrainData(frame, items, base.user_features, info)


def retrain(
    run_dir: Path,
    store: EventStore,
    out: Path,
    cache_dir: Path,
    options: FitOptions,
    overrides: dict[str, Any] | None = None,
) -> Run:
    """Train the run's model (its name, config updated by ``overrides``, and seed) on :func:`retrain_data`
    under the run's split, and write the new run to ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {out} is the run being retrained; write the new run to another directory")
    meta = read_meta(run_dir)
    data = retrain_data(run_dir, store, cache_dir)
    data.write(out / DATA_DIR)
    old = DataRecipe(**meta["data"])
    recipe = DataRecipe(
        dataset=str((out / DATA_DIR).resolve()), dedupe=old.dedupe, split=old.split, split_params=old.split_params
    )
    config = {**meta["config"], **(overrides or {})}
    options = replace(options, seed=int(meta["seed"]))
    return train_run(recipe, str(meta["model"]), config, out, cache_dir, options, extra_meta={"retrain": data.info})


def default_store(run_dir: Path) -> str:
    """The store of a run when no ``--db`` is given: for a retrained run the SQLite file it was retrained
    from (a service keeps its events and keys across retrains), else ``RUN_DIR/events.db``."""
    path = Path(run_dir)
    if not (path / RUN_FILE).is_file():
        return str(path / "events.db")  # not a run: opening it says so
    recorded = (read_meta(path).get("retrain") or {}).get("store")
    if recorded is None:
        return str(path / "events.db")
    if "://" in str(recorded):
        raise ConfigError(f"{path} was retrained from the database {recorded}; name it with --db")
    return str(recorded)


def reload_service(url: str, run_dir: Path, key: str | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Ask the service at ``url`` to swap to ``run_dir`` (``POST /admin/reload``); returns what it now serves."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--reload needs the service's http:// or https:// address, got {url!r}")
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps({"run": str(Path(run_dir).resolve())}).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}/admin/reload", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as err:
        raise ReloadFailed(f"{url} answered {err.code}: {_detail(err.read())}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ReloadFailed(f"cannot reach {url}: {getattr(err, 'reason', err)}") from None


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body)["detail"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500]


def _raw_interactions(ds: Dataset) -> pd.DataFrame:
    """The interactions with raw user and item IDs, in the dataset's (time) order."""
    inter = ds.interactions
    frame = pd.DataFrame(
        {
            "user": np.asarray(ds.users.ids, dtype=object)[inter["user"].to_numpy()],
            "item": np.asarray(ds.items.ids, dtype=object)[inter["item"].to_numpy()],
            "timestamp": inter["timestamp"].to_numpy(),
        }
    )
    for column in ("event", *UNRATED):
        if column in inter.columns:
            frame[column] = inter[column].to_numpy()
    return frame


def _with_stored_items(catalog: pd.DataFrame, stored: list[Item]) -> pd.DataFrame:
    """The catalog with the items of ``PUT /items``: their title and fields win over the catalog's (as
    the service shows them), genres or categories become the item's categories, new items come last."""
    if not stored:
        return catalog
    rows = {str(row["item"]): {str(k): v for k, v in row.items()} for row in catalog.to_dict("records")}
    for it in stored:
        row: dict[str, Any] = {**rows.get(it.item, {"item": it.item}), **it.fields}
        if it.title is not None:
            row["title"] = it.title
        categories = it.fields.get("categories", it.fields.get("genres"))
        if categories is not None:
            many = isinstance(categories, list | tuple)
            row["categories"] = [str(c) for c in categories] if many else str(categories).split("|")
        rows[it.item] = row
    frame = pd.DataFrame(list(rows.values()))
    missing = frame["categories"].isna() if "categories" in frame.columns else None
    if missing is not None and missing.any():
        frame["categories"] = [[] if gone else cats for cats, gone in zip(frame["categories"], missing, strict=True)]
    return frame


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as Parquet. A column Arrow cannot type as one, or holding mappings (free-form item
    fields sent to the service), is written as text: JSON for anything that is not a string."""
    import pyarrow as pa

    out = frame.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        try:
            kind = pa.array(out[column], from_pandas=True).type
            simple = not (pa.types.is_struct(kind) or (pa.types.is_list(kind) and pa.types.is_struct(kind.value_type)))
        except (TypeError, ValueError, pa.ArrowException):
            simple = False
        if not simple:
            out[column] = [_text(v) for v in out[column]]
    out.to_parquet(path, index=False)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if not isinstance(value, list | tuple | dict | np.ndarray) and pd.isna(value):
        return None
    return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, default=str)


__all__ = ["ReloadFailed", "RetrainData", "default_store", "reload_service", "retrain", "retrain_data"]
