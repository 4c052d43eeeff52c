"""Catalog-constrained beam search: generate only token sequences that name a catalog item.

A generative recommender (TIGER's semantic-ID decoder, or an LLM writing item titles) is only
useful if what it writes is an item. A :class:`Trie` over the items' token sequences says, at every
prefix, which tokens keep the output inside the catalog; :func:`constrained_beam_search` expands
only those, so every result is a real item and no compute goes to strings that name nothing.

The model side is a :class:`Stepper`: it returns next-token log-probs for a set of beams and
extends them by one token. Keeping it this small lets a transformer with a KV cache, a model that
re-runs its short input every step, and a table in a test all drive the same search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np
import torch

from lmrec.data.batch import QueryBatch

ROOT = 0


class Trie:
    """Prefix tree of item token sequences; item ``i`` is ``sequences[i]``.

    An item lives at the node its last token reaches. Sequences may be prefixes of one another
    (titles: "Alien" and "Aliens"), so a node can hold an item *and* have children. With an
    ``end_token`` an item is finished by emitting that token at its node (LLM titles: the end of
    the title is itself a decision); without one an item is finished as soon as its last token is
    emitted (fixed-length semantic IDs). Every node counts the items beneath it (itself included),
    which lets the search skip branches whose items are all banned.
    """

    def __init__(self, sequences: list[list[int]], end_token: int | None = None) -> None:
        self.end_token = end_token
        self.n_items = len(sequences)
        self.children: list[dict[int, int]] = [{}]
        self.parent: list[int] = [-1]
        self.token: list[int] = [-1]  # token on the edge into each node
        self.item: list[int] = [-1]  # item id ending at each node, -1 for none
        self.count: list[int] = [0]  # items at or below each node
        self.item_node: list[int] = []  # node of each item
        for item, sequence in enumerate(sequences):
            tokens = [int(t) for t in sequence]
            if not tokens and end_token is None:
                raise ValueError(f"item {item} has an empty token sequence; without an end token it cannot be emitted")
            if end_token is not None and end_token in tokens:
                raise ValueError(f"item {item} contains the end token {end_token}")
            node = ROOT
            for token in tokens:
                child = self.children[node].get(token)
                if child is None:
                    child = len(self.children)
                    self.children[node][token] = child
                    self.children.append({})
                    self.parent.append(node)
                    self.token.append(token)
                    self.item.append(-1)
                    self.count.append(0)
                node = child
            if self.item[node] >= 0:
                raise ValueError(f"items {self.item[node]} and {item} have the same token sequence {tokens}")
            self.item[node] = item
            self.item_node.append(node)
            while node >= 0:
                self.count[node] += 1
                node = self.parent[node]

    def __len__(self) -> int:
        """Number of nodes, root included."""
        return len(self.children)

    def walk(self, tokens: Iterable[int]) -> int | None:
        """The node reached by ``tokens`` from the root, or None if they leave the trie."""
        node = ROOT
        for token in tokens:
            child = self.children[node].get(int(token))
            if child is None:
                return None
            node = child
        return node

    def sequence(self, item: int) -> list[int]:
        """The token sequence of ``item`` (read back up the tree)."""
        tokens = []
        node = self.item_node[item]
        while node != ROOT:
            tokens.append(self.token[node])
            node = self.parent[node]
        return tokens[::-1]

    def banned_counts(self, banned: Iterable[int]) -> dict[int, int]:
        """How many of ``banned`` lie at or below each node (only nodes with any). Items outside
        the catalog are ignored, so a raw history can be passed as is. Computed per search, the
        trie itself stays shared and unchanged."""
        out: dict[int, int] = {}
        for item in {int(i) for i in banned}:
            if not 0 <= item < self.n_items:
                continue
            node = self.item_node[item]
            while node >= 0:
                out[node] = out.get(node, 0) + 1
                node = self.parent[node]
        return out


class Stepper(Protocol):
    """The model side of a beam search: next-token log-probs for a growing set of beams."""

    def start(self) -> torch.Tensor:
        """Log-probs (vocab,) of the first token, for the single empty beam."""
        ...

    def advance(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        """Make new beam ``j`` = old beam ``parents[j]`` + ``tokens[j]`` (reorder any cache by
        ``parents``) and return the (len(tokens), vocab) log-probs of each new beam's next token."""
        ...


class PriorGuided:
    """A :class:`Stepper` that adds an item prior to a generator's token log-probs (hybrid
    decoding, as D3 adds a sequential model's scores): the prior's log-mass under a node,
    ``M(node) = log Σ p(item)`` over the items at or below it, and the token from ``node`` to
    ``child`` gains ``weight · (M(child) − M(node))`` (ending an item at a node with the end token
    gains ``weight · (log p(item) − M(node))``). Along an item's tokens the gains sum to
    ``weight · log p(item)`` (``M(root) = 0`` for a normalised prior), so a finished item scores
    ``log p_gen(item) + weight · log p_prior(item)``, and at every step a beam is ranked by what
    the prior says of the items it can still reach, not only of those it has finished."""

    def __init__(self, inner: Stepper, trie: Trie, item_logprobs: torch.Tensor, weight: float) -> None:
        self.inner, self.trie, self.weight = inner, trie, weight
        self.item_logprobs = item_logprobs.double().cpu().numpy()
        self.mass = node_log_mass(trie, self.item_logprobs)
        self.nodes = [ROOT]

    def _guide(self, logprobs: torch.Tensor) -> torch.Tensor:
        out = logprobs.double().clone()
        end = self.trie.end_token
        for b, node in enumerate(self.nodes):
            here = self.mass[node]
            children = self.trie.children[node]
            tokens, gains = list(children), [self.mass[c] for c in children.values()]
            if end is not None and self.trie.item[node] >= 0:
                tokens.append(end)
                gains.append(self.item_logprobs[self.trie.item[node]])
            if tokens:
                gain = np.asarray(gains) - here if np.isfinite(here) else np.full(len(gains), -np.inf)
                out[b, tokens] += torch.from_numpy(self.weight * gain).to(out.device)
        return out

    def start(self) -> torch.Tensor:
        return self._guide(self.inner.start().unsqueeze(0))[0]

    def advance(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        self.nodes = [self.trie.children[self.nodes[p]][t] for p, t in zip(parents, tokens, strict=True)]
        return self._guide(self.inner.advance(parents, tokens))


def node_log_mass(trie: Trie, item_logprobs: np.ndarray) -> np.ndarray:
    """``log Σ exp(item_logprobs)`` over the items at or below every node of ``trie`` (-inf where
    there are none): each node's own item, then the children's masses added into their parents,
    deepest nodes first (a child is always created after its parent)."""
    mass = np.full(len(trie), -np.inf)
    mass[trie.item_node] = item_logprobs
    parent = np.asarray(trie.parent)
    for node in range(len(trie) - 1, 0, -1):
        mass[parent[node]] = np.logaddexp(mass[parent[node]], mass[node])
    return mass


def constrained_beam_search(
    stepper: Stepper,
    trie: Trie,
    beams: int,
    k: int,
    banned: Iterable[int] = (),
    max_steps: int = 64,
) -> list[tuple[int, float]]:
    """Up to ``k`` distinct catalog items as (item id, total log-prob), best first.

    Each step expands every live beam by the tokens that stay in the trie (children whose items
    are not all banned, plus ``trie.end_token`` where an unbanned item ends) and keeps the best
    ``beams`` continuations. A candidate that completes an item is recorded at once and takes no
    beam slot, because finishing costs no further model call. The search stops when ``k`` items are
    finished and no live beam can beat the ``k``-th (log-probs only fall as tokens are added), when
    no beam is left, or after ``max_steps`` tokens. With ``beams`` at least the number of items the
    result is exact: the top ``k`` items by sequence log-prob.
    """
    if beams < 1 or k < 1:
        return []
    banned_items = {int(i) for i in banned if 0 <= int(i) < trie.n_items}
    blocked = trie.banned_counts(banned_items)

    def live(node: int) -> bool:  # some unbanned item at or below
        return trie.count[node] > blocked.get(node, 0)

    def item_at(node: int) -> int:  # the unbanned item ending here, or -1
        item = trie.item[node]
        return item if item >= 0 and item not in banned_items else -1

    def live_below(node: int) -> bool:  # some unbanned item strictly below
        return trie.count[node] - blocked.get(node, 0) - (item_at(node) >= 0) > 0

    end = trie.end_token
    finished: dict[int, float] = {}
    if not live(ROOT):
        return []
    nodes, scores = [ROOT], [0.0]  # live beams: their trie node and log-prob so far
    logprobs = stepper.start().unsqueeze(0)
    for step in range(max_steps):
        # every allowed (beam, token, next node); next node -1 means "emit the end token here"
        rows: list[int] = []
        tokens: list[int] = []
        targets: list[int] = []
        for b, node in enumerate(nodes):
            for token, child in trie.children[node].items():
                if live(child):
                    rows.append(b)
                    tokens.append(token)
                    targets.append(child)
            if end is not None and item_at(node) >= 0:
                rows.append(b)
                tokens.append(end)
                targets.append(-1)
        if not rows:
            break
        index = (torch.tensor(rows, device=logprobs.device), torch.tensor(tokens, device=logprobs.device))
        gains = logprobs[index].double().cpu().tolist()
        candidates: list[tuple[float, int, int, int]] = []  # (score, beam, token, next node)
        for b, token, target, gain in zip(rows, tokens, targets, gains, strict=True):
            score = scores[b] + gain
            if target < 0:
                finished[trie.item[nodes[b]]] = score
                continue
            if end is None:
                item = item_at(target)
                if item >= 0:
                    finished[item] = score
                if not live_below(target):
                    continue  # nothing left to generate under this node
            candidates.append((score, b, token, target))
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        kept = candidates[:beams]
        if not kept:
            break
        if len(finished) >= k:
            kth = sorted(finished.values(), reverse=True)[k - 1]
            if kept[0][0] <= kth:
                break  # no live beam can still beat the k-th finished item
        if step + 1 == max_steps:
            break
        nodes = [c[3] for c in kept]
        scores = [c[0] for c in kept]
        logprobs = stepper.advance([c[1] for c in kept], [c[2] for c in kept])
    ranked = sorted(finished.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(item, float(score)) for item, score in ranked[:k]]


def generated_scores(found: list[tuple[int, float]], popularity: torch.Tensor) -> torch.Tensor:
    """One query's scores over the catalog from a generated list of (item, log-prob), best first:
    the generated items keep their log-probs; every other item ranks after them, by popularity.
    Scores stay finite: the tail sits strictly below the lowest generated log-prob."""
    pop = torch.log1p(popularity.float())
    lowest = min((s for _, s in found), default=0.0)
    out = lowest - 2 + pop / (pop.max() + 1)  # the tail: in [lowest - 2, lowest - 1), popularity order
    if found:
        items, scores = zip(*found, strict=True)
        out[list(items)] = torch.tensor(scores, dtype=out.dtype)
    return out


def generated_ranking(
    batch: QueryBatch,
    popularity: torch.Tensor,
    generate: Callable[[int, np.ndarray], list[tuple[int, float]]],
) -> torch.Tensor:
    """Scores (len(batch), n_items) of a generative model, one query at a time: ``generate`` gets
    the query's row in the batch and its history (catalog rows only, never empty) and returns its
    (item, log-prob) list, which :func:`generated_scores` spreads over the catalog. An empty
    history gets popularity."""
    n_items = len(popularity)
    out = torch.empty(len(batch), n_items)
    for row in range(len(batch)):
        h = batch.history(row)
        h = h[(h >= 0) & (h < n_items)]
        out[row] = generated_scores(generate(row, h), popularity) if len(h) else torch.log1p(popularity)
    return out
