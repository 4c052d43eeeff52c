"""Robustness: data-poisoning attacks as tools and an unsupervised fake-profile detector.

* :mod:`~lmrec.robust.attacks` — fake users that push target items (random, bandwagon and
  sequence-aware profiles), a text attack on target items' text, and writing a (poisoned) dataset
  back as a directory ``lmrec train --dataset`` reads (``lmrec attack``);
* :mod:`~lmrec.robust.detect` — how far a user's items lean popular or niche, and whether they share
  an item with too many users leaning the same way, as one suspicion score; the users it flags, and
  removing them (``lmrec detect``).

This package sits above the models in the layers but reads only :mod:`lmrec.data`.
"""

from __future__ import annotations

from lmrec.robust.attacks import (
    ATTACK_KINDS,
    Attack,
    choose_targets,
    inject,
    median_length,
    text_attack,
    text_column,
    write_dataset,
)
from lmrec.robust.detect import DetectionResult, detect, detection_quality, remove_users, robust_z, user_features

__all__ = [
    "ATTACK_KINDS",
    "Attack",
    "DetectionResult",
    "choose_targets",
    "detect",
    "detection_quality",
    "inject",
    "median_length",
    "remove_users",
    "robust_z",
    "text_attack",
    "text_column",
    "user_features",
    "write_dataset",
]
