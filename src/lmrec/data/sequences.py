"""Training sequences: each user's history cut into windows, batched by length, right-padded.

Shared by every model that reads histories as sequences (``sasrec``/``bert4rec``, ``tiger``, the
LM ranker's token batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lmrec.data.batch import QueryBatch


def sequence_windows(
    histories: QueryBatch, size: int, min_length: int = 1, shifts: np.ndarray | None = None
) -> list[np.ndarray]:
    """Cut each history into windows of at most ``size`` items, from the end backwards, and keep
    those of at least ``min_length`` items (2 for next-item training: one item has no target).

    Consecutive windows overlap by one item so that, for next-item training, every transition
    (a → b) is supervised exactly once. Items are shifted by one (0 is padding). ``shifts[i]``
    (0 ≤ shift ≤ size − 2) shortens the most recent window of history i, when it is cut at all (longer
    than ``size``), by that many items, which moves every window boundary before it: drawn afresh
    each epoch, an item is read after contexts of different lengths while each transition is still
    supervised once. Histories that fit in one window stay whole.
    """
    out = []
    stride = max(1, size - 1)
    for i in range(len(histories)):
        h = histories.history(i) + 1
        end, cut = len(h), 0 if shifts is None or len(h) <= size else int(shifts[i])
        while end > 1 or (end == 1 and len(h) == 1):
            start = max(0, end - size + cut)
            out.append(h[start:end])
            if start == 0:
                break
            end, cut = start + (size - stride), 0
    return [w for w in out if len(w) >= min_length]


def length_buckets(windows: list[np.ndarray], batch_size: int, gen: torch.Generator) -> list[list[np.ndarray]]:
    """Batches of windows of similar length (little compute goes to padding), in random order;
    ties broken randomly each epoch."""
    jitter = torch.rand(len(windows), generator=gen).numpy()
    lengths = np.array([len(w) for w in windows])
    batches = _batched(windows, np.lexsort((jitter, lengths)).tolist(), batch_size)
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[p] for p in perm]


def random_batches(windows: list[np.ndarray], batch_size: int, gen: torch.Generator) -> list[list[np.ndarray]]:
    """Batches of windows drawn at random, every length mixed in each. (Batches of similar length
    trained worse: SASRec on amazon-beauty-2014, validation NDCG@10 after 40 epochs 0.0574 against
    0.0631 — a step on short windows alone, then one on long windows alone.)"""
    return _batched(windows, torch.randperm(len(windows), generator=gen).tolist(), batch_size)


def _batched(windows: list[np.ndarray], order: list[int], batch_size: int) -> list[list[np.ndarray]]:
    """``windows`` in ``order``, cut into batches of ``batch_size``."""
    return [[windows[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def pad_right(sequences: Sequence[np.ndarray], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, longest) int64 ids right-padded with ``value``, and the (B, longest) 0/1 mask of real
    entries; at least one column wide."""
    width = max(1, max((len(s) for s in sequences), default=1))
    ids = np.full((len(sequences), width), value, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
