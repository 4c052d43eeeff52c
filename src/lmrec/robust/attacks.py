"""Data-poisoning attacks as tools: fake users that push target items, and a text attack.

An attack here is what an adversary who can create accounts (or edit item text) could do to the
training log, so that a model trained on it ranks a few unpopular *target* items higher. These are
measurement tools: inject fakes, train, and see how far the targets move (and whether
:mod:`lmrec.robust.detect` finds the fakes).

Fake profiles (:func:`inject`), one target each, targets spread evenly over the fake users:

* ``random``: fillers drawn uniformly from the items that have interactions, then the target;
* ``bandwagon``: fillers drawn from the ``popular`` most popular items (so the fake looks like a
  mainstream user and its target rides on the popular items' co-occurrences), then the target;
* ``sequence``: a real genuine user's history cut short so that it leads into the target (a random
  genuine user's first items, then the target): sequential models learn "after these, the target".

The default evaluation protocol is leave-one-out in time order (each user's last item is the test
item, the one before it the validation item, :func:`lmrec.data.splits.leave_one_out`). An attacker
who knows that does not put the target last, where it would be held out and never trained on: every
fake profile ends with the target followed by two more fillers (popular items for bandwagon and
sequence, random ones for random), so the target sits in the training part. ``length`` counts every
item of a profile, those two included.

Fake rows come after the whole genuine log: their timestamps are the latest genuine timestamp plus
1, 2, 3, ... in profile order, so each profile keeps its order and time-ordered per-user splits see
it as written. (A global time cut, ``--split temporal``, would put them in the test part.)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from lmrec.data.schema import OPTIONAL_COLUMNS, Dataset, Vocab
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError, DataError

AttackKind = Literal["random", "bandwagon", "sequence"]
ATTACK_KINDS = ("random", "bandwagon", "sequence")
FAKE_PREFIX = "fake-"
TAIL = 2  # fillers after the target: the leave-one-out validation and test items
# Where text lives in a catalog, as lmrec.text reads it (mirrored here: robust sits on data only).
TEXT_FALLBACK = ("name", "keywords", "description", "text", "overview", "plot", "summary", "tags")
DESCRIPTION_COLUMNS = ("description", "text", "overview", "plot", "summary")
STOPWORDS = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it", "its",
        "of", "on", "or", "the", "to", "with", "edition", "version",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Attack:
    """One shilling attack: ``kind`` of fake profile, ``fraction`` fake users per genuine user
    (0.01: one fake per hundred genuine users), the raw IDs of the ``targets`` to push, the profile
    ``length`` (every item, the two after the target included; default: the median genuine history
    length), the size of the ``popular`` pool bandwagon and sequence fillers come from, and the seed."""

    kind: AttackKind
    fraction: float
    targets: tuple[str, ...]
    length: int | None = None
    popular: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ConfigError(f"unknown attack kind {self.kind!r}; choose one of {', '.join(ATTACK_KINDS)}")
        if not 0 < self.fraction < 1:
            raise ConfigError(f"attack fraction must be in (0, 1), got {self.fraction}")
        if not self.targets:
            raise ConfigError("an attack needs at least one target item")
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        if self.length is not None and self.length < TAIL + 1:
            raise ConfigError(f"profile length must be at least {TAIL + 1} (target + {TAIL} after it)")
        if self.popular < 1:
            raise ConfigError(f"popular pool must hold at least one item, got {self.popular}")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["targets"] = list(self.targets)
        return out


@dataclass(frozen=True)
class _Log:
    """What the attacks read from a dataset: per-user sequences and item popularity."""

    sequences: list[np.ndarray] = field(repr=False)  # item rows per genuine user, time order
    popularity: np.ndarray = field(repr=False)  # distinct users per item row

    @classmethod
    def of(cls, dataset: Dataset) -> _Log:
        inter = dataset.interactions
        users = inter["user"].to_numpy()
        items = inter["item"].to_numpy()
        order = np.argsort(users, kind="stable")  # stable: time order within a user
        bounds = np.flatnonzero(np.diff(users[order])) + 1
        sequences = [s for s in np.split(items[order], bounds) if len(s)]
        return cls(sequences, dataset.item_popularity())


def _train_counts(dataset: Dataset) -> np.ndarray:
    """Distinct users per item row in the leave-one-out training part."""
    train = leave_one_out(dataset).frame("train")[["user", "item"]].drop_duplicates()
    return np.bincount(train["item"].to_numpy(), minlength=dataset.n_items)


def choose_targets(
    dataset: Dataset, n: int, seed: int = 0, *, min_count: int = 2, max_count: int | None = None
) -> list[str]:
    """``n`` unpopular items (raw IDs) drawn at random: items with between ``min_count`` and
    ``max_count`` distinct users in the leave-one-out training part, ``max_count`` defaulting to the
    25th percentile of those counts over the items that have any. ``min_count`` ≥ 1 makes sure a
    target exists in the training data a model sees."""
    if n < 1:
        raise ConfigError(f"choose at least one target, got n={n}")
    if min_count < 1:
        raise ConfigError(f"min_count must be at least 1 (a target has to exist in training), got {min_count}")
    counts = _train_counts(dataset)
    if max_count is None:
        max_count = max(min_count, int(np.percentile(counts[counts > 0], 25)))
    pool = np.flatnonzero((counts >= min_count) & (counts <= max_count))
    if len(pool) < n:
        raise DataError(
            f"only {len(pool)} items have {min_count}-{max_count} training users; {n} targets asked for",
            path=dataset.name,
            hint="ask for fewer targets or raise max_count",
        )
    rows = np.random.default_rng(seed).choice(pool, size=n, replace=False)
    return dataset.items.raw(rows)


def median_length(dataset: Dataset) -> int:
    """The median number of interactions of a user (rounded, at least ``TAIL + 1``)."""
    lengths = np.bincount(dataset.interactions["user"].to_numpy())
    return max(TAIL + 1, round(float(np.median(lengths[lengths > 0]))))


def _draw(rng: np.random.Generator, pool: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    """``k`` distinct items of ``pool`` not in ``exclude``, in a random order."""
    allowed = pool[~np.isin(pool, list(exclude))] if exclude else pool
    if len(allowed) < k:
        raise DataError(f"cannot draw {k} distinct filler items from a pool of {len(allowed)}")
    return [int(i) for i in rng.choice(allowed, size=k, replace=False)]


def _profiles(dataset: Dataset, attack: Attack, n_fake: int, length: int) -> list[list[int]]:
    """Item rows of each fake profile, in time order; fake ``j`` pushes target ``j mod len(targets)``."""
    rng = np.random.default_rng(attack.seed)
    log = _Log.of(dataset)
    targets = [dataset.items.row(t) for t in attack.targets]
    seen = np.flatnonzero(log.popularity > 0)
    by_popularity = np.argsort(-log.popularity, kind="stable")
    # the pool holds enough items to fill a profile without repeats, whatever ``popular`` says
    pool = by_popularity[: max(attack.popular, length + 1)]
    donors = rng.permutation(len(log.sequences))
    cursor = 0  # the next donor history for a sequence-aware profile
    profiles = []
    for j in range(n_fake):
        target = targets[j % len(targets)]
        if attack.kind == "random":
            fillers = _draw(rng, seen, length - 1, {target})
            head, tail = fillers[: length - 1 - TAIL], fillers[length - 1 - TAIL :]
        elif attack.kind == "bandwagon":
            fillers = _draw(rng, pool, length - 1, {target})
            head, tail = fillers[: length - 1 - TAIL], fillers[length - 1 - TAIL :]
        else:
            head, cursor = _donor_prefix(log.sequences, donors, cursor, target, length - 1 - TAIL)
            tail = _draw(rng, pool, TAIL, {target, *head})
        profiles.append([*head, target, *tail])
    return profiles


def _donor_prefix(
    sequences: list[np.ndarray], donors: np.ndarray, start: int, target: int, k: int
) -> tuple[list[int], int]:
    """The first ``k`` items (the target left out) of the next donor from ``start`` on whose history
    has that many, the donors taken in a random order (cycling when fakes outnumber them), and where
    the next search starts; the longest history's start when no history is long enough."""
    n = len(donors)
    for step in range(n):
        history = sequences[donors[(start + step) % n]]
        history = history[history != target]
        if len(history) >= k:
            return [int(i) for i in history[:k]], start + step + 1
    longest = max(sequences, key=len)
    return [int(i) for i in longest[longest != target][:k]], start


def inject(dataset: Dataset, attack: Attack) -> tuple[Dataset, list[str]]:
    """The dataset with ``round(fraction × genuine users)`` (at least one) fake users added, and the
    fakes' raw IDs (``fake-0``, ``fake-1``, ...). See the module docstring for the profiles; the
    same attack (seed included) gives the same dataset."""
    unknown = [t for t in attack.targets if t not in dataset.items]
    if unknown:
        raise ConfigError(f"target item(s) {unknown[:5]} are not in {dataset.name}")
    inter = dataset.interactions
    n_genuine = int(inter["user"].nunique())
    n_fake = max(1, round(attack.fraction * n_genuine))
    fake_ids = [f"{FAKE_PREFIX}{j}" for j in range(n_fake)]
    taken = [f for f in fake_ids if f in dataset.users]
    if taken:
        raise DataError(f"user ID {taken[0]!r} already exists; fake users are named {FAKE_PREFIX}N", path=dataset.name)
    length = attack.length or median_length(dataset)
    profiles = _profiles(dataset, attack, n_fake, length)

    users = Vocab(dataset.users.ids + fake_ids)
    user_rows = np.repeat(np.arange(dataset.n_users, len(users)), [len(p) for p in profiles])
    items = np.concatenate([np.asarray(p, dtype=np.int64) for p in profiles])
    stamps = inter["timestamp"]
    start = stamps.max() if len(stamps) else 0
    fake = pd.DataFrame(
        {
            "user": user_rows.astype(inter["user"].to_numpy().dtype),
            "item": items.astype(inter["item"].to_numpy().dtype),
            "timestamp": (start + 1 + np.arange(len(items))).astype(stamps.to_numpy().dtype),
        }
    )
    for col in OPTIONAL_COLUMNS:
        if col in inter.columns:
            fake[col] = np.full(len(fake), _fill_value(inter[col], col), dtype=inter[col].to_numpy().dtype)
    out = pd.concat([inter, fake[list(inter.columns)]], ignore_index=True)
    return replace(dataset, interactions=out, users=users), fake_ids


def _fill_value(values: pd.Series, col: str) -> Any:
    """What fake rows carry in an optional column: the top rating (a push attack rates its items
    highly, and a min-rating filter keeps them), the median weight, the most common event."""
    if col == "rating":
        return values.max()
    if col == "weight":
        return values.median()
    return values.mode().iat[0]


# -- the text attack ------------------------------------------------------------------------------


def text_column(dataset: Dataset) -> str:
    """The catalog column text models read first for this dataset: the first column its
    ``text_template`` names, else ``title`` when items have titles, else the first text column
    (as :func:`lmrec.text.choose_template` chooses)."""
    catalog = dataset.catalog
    template = dataset.meta.get("text_template")
    if template:
        description = next((c for c in DESCRIPTION_COLUMNS if c in catalog.columns), "description")
        for name in re.findall(r"{([^{}:!]+)", str(template)):
            name = {"description": description}.get(name, name)
            if name in catalog.columns and name not in ("item", "categories", "year"):
                return name
    titles = catalog["title"].astype(str)
    if (titles != catalog["item"].astype(str)).any():
        return "title"
    for col in TEXT_FALLBACK:
        if col in catalog.columns and any(isinstance(v, str) and v.strip() for v in catalog[col]):
            return col
    raise DataError("the catalog has no item text to rewrite", path=dataset.name)


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9][a-z0-9'&+-]*", text.lower()) if len(w) > 2 and w not in STOPWORDS]


def text_attack(
    dataset: Dataset,
    targets: list[str] | tuple[str, ...],
    n_words: int = 8,
    seed: int = 0,
    *,
    popular: int = 50,
    mode: Literal["words", "title"] = "words",
) -> Dataset:
    """The dataset with each target's text (the column :func:`text_column` picks) made to read like
    the popular items': ``words`` appends the ``n_words`` most frequent words of the ``popular``
    most popular items' texts (ties: first seen in popularity order) that the target's text lacks;
    ``title`` appends the text of a popular item drawn at random. Item IDs, interactions and every
    other item's text stay as they were."""
    unknown = [t for t in targets if t not in dataset.items]
    if unknown:
        raise ConfigError(f"target item(s) {unknown[:5]} are not in {dataset.name}")
    if mode not in ("words", "title"):
        raise ConfigError(f"text attack mode must be 'words' or 'title', got {mode!r}")
    col = text_column(dataset)
    catalog = dataset.catalog.copy()
    texts = [v if isinstance(v, str) else "" if pd.isna(v) else str(v) for v in catalog[col]]
    rows = [dataset.items.row(t) for t in targets]
    order = np.argsort(-dataset.item_popularity(), kind="stable")
    head = [int(r) for r in order if int(r) not in set(rows)][:popular]
    rng = np.random.default_rng(seed)
    counts = Counter(w for r in head for w in dict.fromkeys(_words(texts[r])))
    ranked = [w for w, _ in counts.most_common()]
    new = list(texts)
    for r in rows:
        if mode == "title":
            extra = texts[int(rng.choice(head))]
        else:
            have = set(_words(texts[r]))
            extra = " ".join([w for w in ranked if w not in have][:n_words])
        new[r] = f"{texts[r]} {extra}".strip()
    catalog[col] = pd.Series(new, index=catalog.index, dtype=object)
    return replace(dataset, catalog=catalog)


# -- writing a dataset back -----------------------------------------------------------------------


def _cell(value: object) -> object:
    """A catalog value as a CSV cell: lists joined by ``|`` (a single value that holds a comma gets
    a trailing ``|`` so the reader does not split it on the comma)."""
    if isinstance(value, list | tuple | np.ndarray):
        parts = [str(v) for v in value]
        return "|".join(parts) + ("|" if len(parts) == 1 and "," in parts[0] else "")
    return value


def write_dataset(dataset: Dataset, directory: str | Path) -> Path:
    """Write ``dataset`` as a directory ``lmrec train --dataset DIR`` reads back: ``interactions.csv``
    (raw user and item IDs, timestamp and any rating/event/weight, in time order), ``items.csv``
    (every catalog item in vocabulary order with its columns; lists such as categories joined by
    ``|``) and ``users.csv`` when there are user features. ``directory`` must be new or empty."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory} exists and is not an empty directory; choose a new output directory")
    directory.mkdir(parents=True, exist_ok=True)
    inter = dataset.interactions
    frame = pd.DataFrame(
        {
            "user": np.asarray(dataset.users.ids, dtype=object)[inter["user"].to_numpy()],
            "item": np.asarray(dataset.items.ids, dtype=object)[inter["item"].to_numpy()],
        }
    )
    for col in inter.columns:
        if col not in ("user", "item"):
            frame[col] = inter[col].to_numpy()
    frame.to_csv(directory / "interactions.csv", index=False)
    catalog = dataset.catalog.copy()
    catalog["item"] = dataset.items.ids
    for col in catalog.columns:
        if catalog[col].dtype == object:
            catalog[col] = pd.Series([_cell(v) for v in catalog[col]], index=catalog.index, dtype=object)
    catalog.to_csv(directory / "items.csv", index=False)
    if dataset.user_features is not None and "user" in dataset.user_features.columns:
        dataset.user_features.to_csv(directory / "users.csv", index=False)
    return directory
