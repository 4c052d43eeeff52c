"""Chunked top-k over a catalog scored block by block: never a (queries, n_items) matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmrec.errors import ConfigError


def chunked_top_k(
    score_block: Callable[[int, int], torch.Tensor], n_rows: int, n_queries: int, k: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (values, row indices), each (n_queries, k), best first, over ``n_rows`` rows.

    ``score_block(start, stop)`` returns the (n_queries, stop - start) scores of rows start..stop;
    only one block and the running top-k are held at a time. Ties keep the lower row first.
    """
    if k < 1 or chunk < 1:
        raise ConfigError(f"k and chunk must be >= 1, got k={k}, chunk={chunk}")
    k = min(k, n_rows)
    best_v = torch.full((n_queries, 0), float("-inf"))
    best_i = torch.zeros((n_queries, 0), dtype=torch.int64)
    for start in range(0, n_rows, chunk):
        stop = min(n_rows, start + chunk)
        block = score_block(start, stop).float()
        kk = min(k, stop - start)
        v, i = torch.topk(block, kk, dim=1, sorted=False)
        v = torch.cat([best_v, v], dim=1)
        i = torch.cat([best_i, i + start], dim=1)
        if v.shape[1] > k:
            v, pick = torch.topk(v, k, dim=1, sorted=False)
            i = torch.gather(i, 1, pick)
        best_v, best_i = v, i
    # best first; equal scores: lower row first (a stable order that tests and callers can rely on)
    order = torch.argsort(best_i, dim=1)
    best_v, best_i = torch.gather(best_v, 1, order), torch.gather(best_i, 1, order)
    order = torch.argsort(best_v, dim=1, descending=True, stable=True)
    return torch.gather(best_v, 1, order), torch.gather(best_i, 1, order)
