"""Unsupervised fake-profile detection: which users look like shilling profiles.

No labels: every feature is computed from the training interactions alone (the leave-one-out
training part, so a user's held-out items play no part), and the score is built of robust z-scores (median
and MAD over all users, or over all items), so a score reads "how many spreads from the typical".

Per user, over their training items:

* ``pop_mean`` and ``pop_std``: mean and spread of the log popularity of their items. Bandwagon
  fakes sit high (their fillers are the most popular items), random fakes low (uniform fillers are
  mostly tail items where genuine users mostly consume popular ones); the score takes the absolute
  robust z of the mean, ``d``.
* ``top_share``: the share of their items among the top 1 % most popular, and ``length``, how many
  items they have. Reported, not scored: fakes copy the median length, so scoring length flags only
  genuine users, and on logs with topic structure the top share flagged mainstream genuine users
  before fakes (measured on generated logs; the mean log popularity already carries its signal).
* ``group``: fakes come in groups, and a group pushes one target, so a target's users are mostly
  fakes that deviate the same way. For each of the user's items, the mean deviation of the *other*
  users of that item (each computed without that item, so an item's own popularity does not count,
  and shrunk towards 0 by ``prior`` pseudo-users, so an item with three users cannot look like a
  crowd), as a robust z over items; ``group`` is the largest of these in the direction the user
  deviates. A whole computation over the sparse users × items matrix, O(interactions).

The suspicion score is ``max(0, group) + |d| / 2``; :func:`detect` flags the top
``expected_fraction`` of users, or those over a threshold. Timestamps are not read: injected fakes
come after the genuine log, and a detector that used that would be measuring the injection.

Why not DegSim (a user's mean similarity to their k most similar users) as the group signal? Fakes as
long as the median genuine history have a handful of training items (four on Amazon Games): they share
the target with the other fakes and little else, no more than genuine users who share an item do. Tried
during development on generated logs shaped like Amazon Games, a lift-weighted DegSim over the users the
individual features made suspects found most bandwagon fakes but no random ones (random fakes are
rarely individually suspicious enough to be among the suspects); the group signal above finds both.

The sequence-aware attack copies genuine history prefixes, so its fakes look genuine on every
feature and share only the target with genuine-looking users: expect most of them to get through.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from lmrec.data.schema import Dataset, Vocab
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError

FEATURES = ("pop_mean", "pop_std", "top_share", "length", "group")
TOP_SHARE = 0.01  # "popular" for top_share: the top 1 % of items by training users
PRIOR = 5.0  # pseudo-users of zero deviation added to every item's crowd


@dataclass(frozen=True)
class DetectionResult:
    """The flagged users (raw IDs, most suspicious first), every user's features and ``score``
    (one row per user, vocabulary order) and the score a user had to reach to be flagged."""

    flagged: list[str]
    scores: pd.DataFrame
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "threshold": self.threshold, "n_flagged": len(self.flagged)}


def _location_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 · MAD; the mean absolute deviation stands in when the MAD is 0 (more than
    half the values equal); a scale of 0 means the values do not vary at all."""
    if len(values) == 0:
        return 0.0, 0.0
    centre = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - centre)))
    if spread == 0:
        spread = 1.2533 * float(np.mean(np.abs(values - centre)))
    return centre, spread


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x − median) / (1.4826 · MAD) (see :func:`_location_scale`); all zeros for constant values."""
    values = np.asarray(values, dtype=np.float64)
    centre, spread = _location_scale(values)
    return (values - centre) / spread if spread > 0 else np.zeros_like(values)


def _train_matrix(dataset: Dataset) -> sparse.csr_matrix:
    """Binary users × items matrix of the leave-one-out training part."""
    train = leave_one_out(dataset).frame("train")[["user", "item"]].drop_duplicates()
    ones = np.ones(len(train), dtype=np.float32)
    shape = (dataset.n_users, dataset.n_items)
    return sparse.csr_matrix((ones, (train["user"].to_numpy(), train["item"].to_numpy())), shape=shape)


def _individual(x: sparse.csr_matrix) -> dict[str, np.ndarray]:
    """The per-user popularity features and length."""
    popularity = np.asarray(x.sum(axis=0)).ravel()
    log_pop = np.log(np.maximum(popularity, 1.0))
    length = np.asarray(x.sum(axis=1)).ravel()
    n = np.maximum(length, 1.0)
    mean = (x @ log_pop) / n
    var = np.maximum((x @ log_pop**2) / n - mean**2, 0.0)
    seen = np.flatnonzero(popularity > 0)
    n_top = max(1, math.ceil(TOP_SHARE * len(seen)))
    top = np.zeros(x.shape[1])
    top[seen[np.argsort(-popularity[seen], kind="stable")[:n_top]]] = 1.0
    return {"pop_mean": mean, "pop_std": np.sqrt(var), "top_share": (x @ top) / n, "length": length}


def _group(
    x: sparse.csr_matrix, total: np.ndarray, length: np.ndarray, centre: float, spread: float, prior: float
) -> np.ndarray:
    """Per user: the largest robust z, over their items, of the shrunk mean leave-the-item-out
    deviation of the item's other users, taken in the direction the user deviates (see the module
    docstring). ``total`` is each user's sum of log popularity, ``centre`` and ``spread`` the
    location and scale of its mean over users."""
    log_pop = np.log(np.maximum(np.asarray(x.sum(axis=0)).ravel(), 1.0))
    usable = length > 1  # a user with one item has no deviation left once it is taken out
    inv = np.where(usable, 1.0 / np.maximum(length - 1, 1.0), 0.0)
    # per item i, Σ over its usable users v of ((total_v − log_pop_i) / (length_v − 1) − centre) / spread
    crowd = x.T @ usable.astype(np.float64)
    sums = (x.T @ (total * inv) - log_pop * (x.T @ inv) - centre * crowd) / spread
    middle, scale = _location_scale((sums / (crowd + prior))[crowd > 1])
    scale = scale or 1.0
    entries = x.tocoo()
    users, items = entries.row, entries.col
    own = np.where(usable[users], ((total[users] - log_pop[items]) * inv[users] - centre) / spread, 0.0)
    others = (sums[items] - own) / (crowd[items] - usable[users] + prior)
    aligned = (others - middle) / scale * np.sign(total[users] / np.maximum(length[users], 1.0) - centre)
    group = np.full(x.shape[0], -np.inf)
    np.maximum.at(group, users, aligned)
    return np.where(np.isfinite(group), group, 0.0)


def user_features(dataset: Dataset, *, prior: float = PRIOR) -> pd.DataFrame:
    """One row per user (vocabulary order): ``user`` (raw ID), the :data:`FEATURES`, ``deviation``
    (the robust z of ``pop_mean``) and ``score`` (see the module docstring); users without training
    interactions score 0."""
    if prior <= 0:
        raise ConfigError(f"prior must be positive, got {prior}")
    x = _train_matrix(dataset)
    features = _individual(x)
    length = features["length"]
    active = length > 0
    centre, spread = _location_scale(features["pop_mean"][active])
    spread = spread or 1.0
    deviation = np.where(active, (features["pop_mean"] - centre) / spread, 0.0)
    group = _group(x, features["pop_mean"] * length, length, centre, spread, prior)
    frame = pd.DataFrame({"user": dataset.users.ids, **features, "group": group, "deviation": deviation})
    frame["score"] = np.where(active, np.maximum(group, 0.0) + np.abs(deviation) / 2, 0.0)
    return frame


def detect(
    dataset: Dataset,
    expected_fraction: float = 0.01,
    *,
    threshold: float | None = None,
    prior: float = PRIOR,
) -> DetectionResult:
    """Score every user (:func:`user_features`) and flag the ``expected_fraction`` most suspicious
    (rounded, at least one), or, given a ``threshold``, every user whose score reaches it."""
    if not 0 < expected_fraction < 1:
        raise ConfigError(f"expected_fraction must be in (0, 1), got {expected_fraction}")
    frame = user_features(dataset, prior=prior)
    order = np.argsort(-frame["score"].to_numpy(), kind="stable")
    if threshold is None:
        n_flag = max(1, round(expected_fraction * int((frame["length"] > 0).sum())))
        chosen = order[:n_flag]
        threshold = float(frame["score"].to_numpy()[chosen[-1]])
    else:
        chosen = order[frame["score"].to_numpy()[order] >= threshold]
    return DetectionResult([str(u) for u in frame["user"].to_numpy()[chosen]], frame, float(threshold))


def detection_quality(flagged: Iterable[str], fake_ids: Iterable[str], n_genuine: int) -> dict[str, float | int]:
    """Precision and recall of ``flagged`` against the known ``fake_ids``, and how many of the
    ``n_genuine`` genuine users were flagged (and so would be removed)."""
    flagged_set, fakes = set(map(str, flagged)), set(map(str, fake_ids))
    hits = len(flagged_set & fakes)
    removed = len(flagged_set) - hits
    return {
        "flagged": len(flagged_set),
        "fakes": len(fakes),
        "true_positives": hits,
        "precision": hits / len(flagged_set) if flagged_set else 0.0,
        "recall": hits / len(fakes) if fakes else 0.0,
        "genuine_removed": removed,
        "genuine_removed_share": removed / n_genuine if n_genuine else 0.0,
    }


def remove_users(dataset: Dataset, user_ids: Iterable[str]) -> Dataset:
    """The dataset without these users and their interactions; items and the catalog stay as they
    are. An ID that is not a user of the dataset is an error (nothing is dropped silently)."""
    drop = {str(u) for u in user_ids}
    unknown = sorted(u for u in drop if u not in dataset.users)
    if unknown:
        raise ConfigError(f"{len(unknown)} user(s) to remove are not in {dataset.name}, e.g. {unknown[:3]}")
    keep = np.array([u not in drop for u in dataset.users.ids], dtype=bool)
    new_row = np.full(dataset.n_users, -1, dtype=np.int64)
    new_row[keep] = np.arange(int(keep.sum()))
    inter = dataset.interactions
    inter = inter[keep[inter["user"].to_numpy()]]
    inter = inter.assign(user=new_row[inter["user"].to_numpy()]).reset_index(drop=True)
    features = dataset.user_features
    if features is not None and "user" in features.columns:
        features = features[~features["user"].astype(str).isin(drop)].reset_index(drop=True)
    users = Vocab([u for u, k in zip(dataset.users.ids, keep, strict=True) if k])
    return replace(dataset, interactions=inter, users=users, user_features=features)
