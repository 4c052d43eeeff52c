"""A user-level membership-inference attack that runs against any lmrec model.

The attacker holds a user's item history and can query the model with a part of it. For each
user (time order) the first ``prefix`` share of the history is the query and the rest are the
targets; the user's attack score is how well the model ranks those targets among every item not
in the query. A model that memorised its training users ranks their own later items higher than a
stranger's, so members score higher than non-members; the ROC AUC of the scores says by how much
(0.5: no better than a coin).

Signals: ``"rank"`` (default) is the mean percentile of the targets among the unmasked items (1 =
ranked first), which needs nothing of the scores but their order; ``"loglik"`` is the mean
log-softmax of the targets' scores, the classic loss-threshold attack for models whose scores are
logits.

Against an ε-differentially-private training algorithm no test can reach an AUC above
``e^ε / (1 + e^ε)`` (:func:`dp_auc_bound`; the ROC curve of an ε-DP test lies under
``TPR ≤ e^ε·FPR`` and ``1 − FPR ≤ e^ε·(1 − TPR)``, whose area is that number). For user-level
membership ε must be the user-level one: a user with k interactions under record-level ε has kε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from lmrec.data.batch import QueryBatch, mask_seen
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.evaluate.evaluator import Scorer
from lmrec.evaluate.metrics import auc
from lmrec.privacy.split import MembershipSplit

Signal = Literal["rank", "loglik"]
SIGNALS = ("rank", "loglik")


def dp_auc_bound(epsilon: float) -> float:
    """The highest ROC AUC a membership test can reach against an ε-DP algorithm: e^ε/(1+e^ε)."""
    if epsilon < 0:
        raise ConfigError(f"epsilon must be >= 0, got {epsilon}")
    return 1.0 / (1.0 + math.exp(-epsilon))


def epsilon_lower_bound(auc_value: float) -> float:
    """The smallest ε for which ``auc_value`` does not break :func:`dp_auc_bound`: log(AUC/(1−AUC)).
    A point estimate from a finite sample of users, not a certified bound."""
    if auc_value <= 0.5:
        return 0.0
    if auc_value >= 1.0:
        return math.inf
    return math.log(auc_value / (1.0 - auc_value))


def _prefixes(batch: QueryBatch, share: float, n_items: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per history: the query (the first ``share``, at least one item, never all) and the targets
    (later items the query does not hold, known to the model)."""
    queries, targets = [], []
    for i in range(len(batch)):
        h = batch.history(i)
        cut = min(max(1, int(len(h) * share)), max(1, len(h) - 1))
        query, later = h[:cut], h[cut:]
        later = np.unique(later[(later >= 0) & (later < n_items) & ~np.isin(later, query)])
        queries.append(query)
        targets.append(later)
    return queries, targets


def membership_scores(
    model: Scorer,
    dataset: Dataset,
    users: np.ndarray,
    *,
    prefix: float = 0.5,
    signal: Signal = "rank",
    user_rows: bool = False,
    max_cells: int = 1 << 24,
) -> np.ndarray:
    """One attack score per user row in ``users`` (higher: more likely a member); NaN for a user
    with nothing left to predict after the prefix.

    ``user_rows=False`` queries with the history alone (user ``-1``), as a service that takes a
    history would be queried; ``True`` also passes the user's row, which a model with per-user
    parameters can give away by itself (a non-member's row was never trained)."""
    if not 0 < prefix < 1:
        raise ConfigError(f"prefix must be in (0, 1), got {prefix}")
    if signal not in SIGNALS:
        raise ConfigError(f"unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    users = np.asarray(users, dtype=np.int64)
    n_items = model.n_items
    histories = QueryBatch.from_interactions(dataset.interactions, users)
    queries, targets = _prefixes(histories, prefix, n_items)
    out = np.full(len(users), np.nan)
    per_target = max(1, n_items)
    start = 0
    while start < len(users):
        # enough users that their targets × items comparisons fit in max_cells
        stop, cells = start, 0
        while stop < len(users) and (stop == start or cells + len(targets[stop]) * per_target <= max_cells):
            cells += len(targets[stop]) * per_target
            stop += 1
        ids = users[start:stop] if user_rows else np.full(stop - start, -1, np.int64)
        batch = QueryBatch.from_histories(ids, queries[start:stop])
        with torch.no_grad():
            scores = model.score(batch).float().cpu()
        mask_seen(scores, batch)
        rows = np.repeat(np.arange(stop - start), [len(t) for t in targets[start:stop]])
        cols = np.concatenate([t for t in targets[start:stop]] + [np.zeros(0, np.int64)])
        if len(rows):
            values = _target_values(scores, torch.from_numpy(rows), torch.from_numpy(cols), signal)
            sums = np.bincount(rows, weights=values, minlength=stop - start)
            counts = np.bincount(rows, minlength=stop - start)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start:stop] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        start = stop
    return out


def _target_values(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, signal: Signal) -> np.ndarray:
    """Per (row, target item): its percentile among the row's unmasked items, or its log-softmax."""
    if signal == "loglik":
        return torch.log_softmax(scores.double(), dim=1)[rows, cols].numpy()
    row_scores = scores[rows]  # (targets, items)
    finite = torch.isfinite(row_scores)
    mine = row_scores[torch.arange(len(rows)), cols].unsqueeze(1)
    below = ((row_scores < mine) & finite).sum(1).double()
    ties = ((row_scores == mine) & finite).sum(1).double() - 1.0  # not counting the target itself
    others = finite.sum(1).double() - 1.0
    return ((below + 0.5 * ties) / others.clamp(min=1.0)).numpy()


@dataclass
class AttackResult:
    """ROC AUC of members against non-members, the scores it came from, and the bounds."""

    auc: float
    member_scores: np.ndarray
    non_member_scores: np.ndarray
    signal: str
    prefix: float
    skipped: int  # users with nothing to predict after the prefix
    epsilon: float | None = None

    @property
    def dp_bound(self) -> float | None:
        """The AUC an ε-DP model could not exceed, for the ``epsilon`` given."""
        return None if self.epsilon is None else dp_auc_bound(self.epsilon)

    @property
    def epsilon_lower_bound(self) -> float:
        return epsilon_lower_bound(self.auc)

    def as_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "signal": self.signal,
            "prefix": self.prefix,
            "members": len(self.member_scores),
            "non_members": len(self.non_member_scores),
            "skipped": self.skipped,
            "member_score_mean": float(np.mean(self.member_scores)),
            "non_member_score_mean": float(np.mean(self.non_member_scores)),
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "epsilon": self.epsilon,
            "dp_auc_bound": self.dp_bound,
        }


def membership_inference(
    model: Scorer,
    split: MembershipSplit,
    *,
    prefix: float = 0.5,
    signal: Signal = "rank",
    user_rows: bool = False,
    epsilon: float | None = None,
) -> AttackResult:
    """Attack ``model`` (trained on ``split.train_dataset()``): score every member and non-member
    with :func:`membership_scores` and return the ROC AUC. ``epsilon``, if given, adds the AUC
    bound of an ε-DP model to the result."""
    if model.n_items != split.dataset.n_items:
        raise ConfigError(f"the model has {model.n_items} items, the split's dataset {split.dataset.n_items}")
    users = np.concatenate([split.members, split.non_members])
    scores = membership_scores(model, split.dataset, users, prefix=prefix, signal=signal, user_rows=user_rows)
    is_member = np.arange(len(users)) < len(split.members)
    keep = ~np.isnan(scores)
    value = auc(np.nan_to_num(scores[keep], neginf=-1e300, posinf=1e300), is_member[keep])
    return AttackResult(
        auc=value,
        member_scores=scores[keep & is_member],
        non_member_scores=scores[keep & ~is_member],
        signal=signal,
        prefix=prefix,
        skipped=int((~keep).sum()),
        epsilon=epsilon,
    )
