"""Generated interaction logs for speed benchmarks, so timings reproduce without the real file.

:func:`ml1m_shaped` has MovieLens-1M's shape (6,040 users, 3,416 items, ~1.0 M events, at least
20 per user and a long tail of heavy users, ~165 on average) with the two properties a sequential
model's speed and convergence depend on:

* a popularity skew: item draws follow a Zipf law (exponent ``zipf``), so the head items are as
  frequent as MovieLens's blockbusters and the tail is long;
* sequential structure: items sit on a line of ``topics`` contiguous blocks; each user prefers a
  few topics, and with probability ``follow`` the next item is a near neighbour of the previous
  one on the line (a franchise, a season), with probability ``explore`` a draw from the whole
  catalog by popularity (everyone watches the blockbusters), otherwise a draw from the user's
  topics by popularity. Nobody sees an item twice, as in MovieLens.

Quality on it says little about real data; it is for time per epoch and time to convergence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.data.schema import Dataset

ML1M_USERS, ML1M_ITEMS, ML1M_EVENTS = 6_040, 3_416, 1_000_209


def history_lengths(n_users: int, total: int, shortest: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal history lengths (MovieLens-1M's spread: median ~0.6 of the mean) with at least
    ``shortest`` each, rescaled so they sum to about ``total``."""
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    extra = raw / raw.sum() * max(0, total - shortest * n_users)
    return shortest + np.floor(extra).astype(np.int64)


def ml1m_shaped(
    seed: int = 0,
    *,
    users: int = ML1M_USERS,
    items: int = ML1M_ITEMS,
    events: int = ML1M_EVENTS,
    shortest: int = 20,
    topics: int = 18,
    follow: float = 0.4,
    explore: float = 0.3,
    zipf: float = 1.0,
) -> Dataset:
    """A MovieLens-1M-shaped sequence log (see the module docstring); the same seed gives the same
    log. Item ``i``'s title is ``"item i"`` and its category its topic."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(history_lengths(users, events, shortest, rng), items // 2)
    order = rng.permutation(items)  # popularity rank -> position on the line, so the head is spread
    popularity = np.empty(items)
    popularity[order] = 1.0 / np.arange(1, items + 1) ** zipf
    topic = np.arange(items) * topics // items  # item i sits at position i, in block topic[i]
    weights_by_topic = [np.where(topic == t, popularity, 0.0) for t in range(topics)]
    cumulative = np.stack([np.cumsum(w) / w.sum() for w in weights_by_topic])
    everything = np.cumsum(popularity) / popularity.sum()

    rows_user, rows_item = [], []
    for user, n in enumerate(lengths):
        liked = rng.choice(topics, size=3, replace=False)
        mix = rng.dirichlet(np.ones(3))
        seen: set[int] = set()
        sequence = np.empty(n, dtype=np.int64)
        previous = -1
        steps = rng.random(2 * n + 16)
        jumps = rng.integers(-8, 9, size=2 * n + 16)
        draws = rng.random(2 * n + 16)
        picks = rng.choice(liked, size=2 * n + 16, p=mix)
        k = filled = 0
        while filled < n:
            if k == len(steps):  # the user's topics are used up: draw from the whole catalog
                item = int(rng.integers(items))
            elif previous >= 0 and steps[k] < follow:
                item = min(max(previous + int(jumps[k]), 0), items - 1)
            elif steps[k] < follow + explore:
                item = min(int(np.searchsorted(everything, draws[k])), items - 1)
            else:
                item = min(int(np.searchsorted(cumulative[picks[k]], draws[k])), items - 1)
            k = min(k + 1, len(steps))
            if item in seen:
                continue
            seen.add(item)
            sequence[filled] = item
            filled += 1
            previous = item
        rows_user.append(np.full(n, user))
        rows_item.append(sequence)

    user_col, item_col = np.concatenate(rows_user), np.concatenate(rows_item)
    # one clock: users' events interleave, each user's in order
    within = np.concatenate([np.sort(rng.random(n)) for n in lengths])
    frame = pd.DataFrame({"user": user_col, "item": item_col, "timestamp": (within * 1e9).astype(np.int64)})
    catalog = pd.DataFrame(
        {
            "item": np.arange(items),
            "title": [f"item {i}" for i in range(items)],
            "categories": [[f"topic {t}"] for t in topic],
        }
    )
    return Dataset.from_frame(frame, catalog, name=f"ml1m-shaped-{seed}")


def write_large_log(
    path: str | Path,
    *,
    events: int = 10_000_000,
    users: int = 50_000,
    items: int = 1_000_000,
    shortest: int = 5,
    topics: int = 500,
    follow: float = 0.4,
    explore: float = 0.3,
    zipf: float = 1.0,
    chunk_users: int = 5_000,
    seed: int = 0,
) -> int:
    """Write a large generated log to one Parquet file (columns user, item, timestamp), a chunk of
    ``chunk_users`` users at a time, so the log is never held in memory; returns the rows written.

    The shape of :func:`ml1m_shaped`, vectorised: log-normal history lengths (at least
    ``shortest``), Zipf item popularity (``zipf``), ``topics`` contiguous blocks of the item line of
    which each user likes three; each event is, with probability ``follow``, a near neighbour
    (±8) of the user's last event that was not one; with ``explore`` a draw from the whole catalog
    by popularity; otherwise a draw from one of the user's topics by popularity. Unlike
    :func:`ml1m_shaped` an item may come back in a history (repeat consumption). Within a chunk
    rows are in time order (one clock over every user), chunks follow each other, so the file is
    not globally time-ordered: a reader has to sort it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    lengths = history_lengths(users, events, shortest, rng)
    short = events - int(lengths.sum())  # the floors lost a few: exactly ``events`` rows
    lengths[: max(0, min(short, users))] += 1
    position_of_rank = rng.permutation(items)  # popularity rank -> position on the item line
    popularity = np.empty(items)
    popularity[position_of_rank] = 1.0 / np.arange(1, items + 1) ** zipf
    cumulative = np.cumsum(popularity)
    cumulative /= cumulative[-1]
    edges = np.arange(topics + 1) * items // topics  # topic t holds positions edges[t]..edges[t+1]-1
    low = np.r_[0.0, cumulative][edges[:-1]]
    high = cumulative[edges[1:] - 1]
    schema = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("timestamp", pa.int64())])
    written = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for first in range(0, users, chunk_users):
            n = lengths[first : first + chunk_users]
            total = int(n.sum())
            owner = np.repeat(np.arange(len(n)), n)
            start = np.r_[0, np.cumsum(n)[:-1]]
            liked = np.stack([rng.choice(topics, size=3, replace=False) for _ in range(len(n))])
            topic = liked[owner, rng.integers(0, 3, size=total)]
            u = rng.random(total)
            by_topic = low[topic] + u * (high[topic] - low[topic])
            kind = rng.random(total)
            base = np.searchsorted(cumulative, np.where(kind < follow + explore, u, by_topic))
            follows = kind < follow
            follows[start] = False  # a history starts with a draw
            idx = np.arange(total)
            anchor = np.maximum.accumulate(np.where(follows, 0, idx))
            steps = np.cumsum(np.where(follows, rng.integers(-8, 9, size=total), 0))
            item = np.clip(base[anchor] + steps - steps[anchor], 0, items - 1)
            clock = np.concatenate([np.sort(rng.random(k)) for k in n]) * 1e9
            order = np.argsort(clock, kind="stable")
            writer.write_table(
                pa.table(
                    {
                        "user": (first + owner[order] + 1).astype(np.int64),
                        "item": item[order].astype(np.int64),
                        "timestamp": clock[order].astype(np.int64),
                    },
                    schema=schema,
                )
            )
            written += total
    return written
