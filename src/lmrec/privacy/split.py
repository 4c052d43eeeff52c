"""A user-disjoint split for membership inference: members train the model, non-members do not.

Unlike the evaluation splits (:mod:`lmrec.data.splits`), which hold out each user's *last*
interactions, this one holds out whole *users*: a non-member contributes nothing to training, so
an attack that tells members from non-members by how the model treats their items measures what
the model memorised about the people it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError


@dataclass(frozen=True)
class MembershipSplit:
    """``members`` and ``non_members`` are user rows of ``dataset``; the model trains on
    :meth:`train_dataset` (the members' interactions plus those of users too short to attack)."""

    dataset: Dataset
    members: np.ndarray
    non_members: np.ndarray
    protocol: dict[str, Any] = field(default_factory=dict)

    def train_dataset(self) -> Dataset:
        """Every interaction but the non-members', with the same vocabularies (item rows agree)."""
        held_out = np.zeros(self.dataset.n_users, bool)
        held_out[self.non_members] = True
        inter = self.dataset.interactions
        return self.dataset.with_interactions(inter[~held_out[inter["user"].to_numpy()]])


def membership_split(
    dataset: Dataset, member_share: float = 0.5, min_interactions: int = 2, seed: int = 0
) -> MembershipSplit:
    """Draw ``member_share`` of the users with at least ``min_interactions`` interactions as members
    and the rest of them as non-members (the same seed gives the same draw). Users with fewer
    interactions cannot be attacked (a prefix and something after it are needed); they are in
    neither group and their interactions stay in training."""
    if not 0 < member_share < 1:
        raise ConfigError(f"member_share must be in (0, 1), got {member_share}")
    if min_interactions < 2:
        raise ConfigError(f"min_interactions must be at least 2 (a prefix and a target), got {min_interactions}")
    counts = np.bincount(dataset.interactions["user"].to_numpy(), minlength=dataset.n_users)
    eligible = np.flatnonzero(counts >= min_interactions)
    n_members = round(len(eligible) * member_share)
    if n_members == 0 or n_members == len(eligible):
        raise ConfigError(
            f"{len(eligible)} users have {min_interactions}+ interactions: too few for members and non-members"
        )
    chosen = np.random.default_rng(seed).permutation(eligible)
    members, non_members = np.sort(chosen[:n_members]), np.sort(chosen[n_members:])
    protocol = {
        "split": "user-disjoint membership",
        "member_share": member_share,
        "min_interactions": min_interactions,
        "seed": seed,
        "members": len(members),
        "non_members": len(non_members),
        "not_attacked": int(dataset.n_users - len(eligible)),
    }
    return MembershipSplit(dataset, members, non_members, protocol)
