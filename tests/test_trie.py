"""Constrained beam search against brute force: with enough beams it must find exactly the top-k items."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrec.llm.trie import ROOT, PriorGuided, Trie, constrained_beam_search, node_log_mass

VOCAB = 6


class TableStepper:
    """Next-token log-probs that depend on the whole prefix (so a wrong beam reorder shows),
    drawn once per prefix from a seeded generator; records every token it is fed."""

    def __init__(self, seed: int, vocab: int = VOCAB) -> None:
        self.vocab, self.gen = vocab, torch.Generator().manual_seed(seed)
        self.rows: dict[tuple[int, ...], torch.Tensor] = {}
        self.beams: list[tuple[int, ...]] = [()]
        self.fed: list[tuple[int, ...]] = []

    def row(self, prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix not in self.rows:
            self.rows[prefix] = torch.log_softmax(2 * torch.randn(self.vocab, generator=self.gen), 0)
        return self.rows[prefix]

    def start(self) -> torch.Tensor:
        self.beams = [()]
        return self.row(())

    def advance(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        self.beams = [(*self.beams[p], t) for p, t in zip(parents, tokens, strict=True)]
        self.fed.extend(self.beams)
        return torch.stack([self.row(b) for b in self.beams])

    def logprob(self, sequence: list[int], end: int | None) -> float:
        tokens = [*sequence, end] if end is not None else sequence
        return sum(float(self.row(tuple(tokens[:i]))[t]) for i, t in enumerate(tokens))


def brute_force(
    stepper: TableStepper, sequences: list[list[int]], k: int, end: int | None, banned: set[int]
) -> list[tuple[int, float]]:
    scored = [(i, stepper.logprob(s, end)) for i, s in enumerate(sequences) if i not in banned]
    return sorted(scored, key=lambda x: (-x[1], x[0]))[:k]


def assert_same(found: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [i for i, _ in found] == [i for i, _ in expected]
    for (_, a), (_, b) in zip(found, expected, strict=True):
        assert a == pytest.approx(b, abs=1e-9)


def unique(sequences: list[list[int]]) -> list[list[int]]:
    """Drop repeated sequences, keeping first occurrences (a trie rejects duplicates)."""
    return [list(s) for s in dict.fromkeys(tuple(s) for s in sequences)]


@settings(max_examples=60, deadline=None)
@given(
    codes=st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=3), min_size=1, max_size=25),
    k=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    banned=st.sets(st.integers(0, 30), max_size=6),
)
def test_fixed_length_codes_match_brute_force(codes: list[list[int]], k: int, seed: int, banned: set[int]) -> None:
    sequences = unique(codes)
    trie = Trie(sequences)
    stepper = TableStepper(seed)
    found = constrained_beam_search(stepper, trie, beams=len(sequences), k=k, banned=banned)
    assert_same(found, brute_force(stepper, sequences, k, None, banned))
    assert not {i for i, _ in found} & banned


@settings(max_examples=60, deadline=None)
@given(
    titles=st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=4), min_size=1, max_size=20),
    k=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    banned=st.sets(st.integers(0, 25), max_size=5),
)
def test_titles_with_end_token_match_brute_force(titles: list[list[int]], k: int, seed: int, banned: set[int]) -> None:
    sequences = unique(titles)  # prefixes of one another, even the empty title
    end = VOCAB - 1
    trie = Trie(sequences, end_token=end)
    stepper = TableStepper(seed)
    found = constrained_beam_search(stepper, trie, beams=len(sequences), k=k, banned=banned)
    assert_same(found, brute_force(stepper, sequences, k, end, banned))
    assert not {i for i, _ in found} & banned


@pytest.mark.parametrize("seed", range(5))
def test_few_beams_stay_in_catalog_and_never_expand_banned_branches(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    sequences = unique(torch.randint(0, 4, (60, 4), generator=gen).tolist())
    banned = {i for i, s in enumerate(sequences) if s[0] == 0}  # a whole first-level branch
    stepper = TableStepper(seed, vocab=4)
    found = constrained_beam_search(stepper, Trie(sequences), beams=3, k=10, banned=banned)
    assert 0 < len(found) <= 10
    assert len({i for i, _ in found}) == len(found)
    assert not {i for i, _ in found} & banned
    assert all(prefix[0] != 0 for prefix in stepper.fed)  # the all-banned branch was never entered
    assert all(Trie(sequences).walk(prefix) is not None for prefix in stepper.fed)
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)


def test_prefix_items_finish_with_end_token() -> None:
    # "alien" = [1], "aliens" = [1, 2], "alien resurrection" = [1, 3, 4]
    sequences = [[1], [1, 2], [1, 3, 4]]
    end = 0
    trie = Trie(sequences, end_token=end)
    assert trie.count[ROOT] == 3 and trie.item[trie.walk([1]) or 0] == 0
    stepper = TableStepper(3)
    found = constrained_beam_search(stepper, trie, beams=3, k=3)
    assert_same(found, brute_force(stepper, sequences, 3, end, set()))
    only = constrained_beam_search(stepper, trie, beams=3, k=3, banned=[1, 2])
    assert [i for i, _ in only] == [0]
    assert only[0][1] == pytest.approx(stepper.logprob([1], end))


def test_search_stops_early_when_nothing_can_beat_the_kth() -> None:
    class Sure:
        """Token 1 is almost certain everywhere: item [1, 1] wins and ends the search at once."""

        calls = 0

        def start(self) -> torch.Tensor:
            return torch.log_softmax(torch.tensor([0.0, 30.0, 0.0]), 0)

        def advance(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
            self.calls += 1
            return self.start().expand(len(tokens), 3)

    sequences = [[a, b] for a in range(3) for b in range(3)]
    stepper = Sure()
    found = constrained_beam_search(stepper, Trie(sequences), beams=9, k=1)
    assert found[0][0] == sequences.index([1, 1]) and found[0][1] > -1e-6
    assert stepper.calls == 1


def test_everything_banned_or_nothing_asked() -> None:
    trie = Trie([[0, 1], [1, 0]])
    assert constrained_beam_search(TableStepper(0), trie, beams=2, k=5, banned=[0, 1, 99, -1]) == []
    assert constrained_beam_search(TableStepper(0), trie, beams=2, k=0) == []
    assert math.isfinite(constrained_beam_search(TableStepper(0), trie, beams=2, k=5, banned=[0])[0][1])


def test_duplicates_and_bad_sequences_raise() -> None:
    with pytest.raises(ValueError, match="items 0 and 2"):
        Trie([[1, 2], [2, 1], [1, 2]])
    with pytest.raises(ValueError, match="end token"):
        Trie([[1, 0]], end_token=0)
    with pytest.raises(ValueError, match="empty"):
        Trie([[]])


def test_trie_reads_back_sequences() -> None:
    sequences = [[3, 1], [3], [2, 2, 2]]
    trie = Trie(sequences, end_token=9)
    assert [trie.sequence(i) for i in range(3)] == sequences
    assert trie.count[ROOT] == 3 and trie.count[trie.walk([3]) or 0] == 2
    assert trie.walk([4]) is None
    assert trie.banned_counts([0, 0, 7]) == {ROOT: 1, trie.walk([3]): 1, trie.walk([3, 1]): 1}


@settings(max_examples=60, deadline=None)
@given(
    titles=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4), min_size=1, max_size=20),
    with_end=st.booleans(),
    weight=st.sampled_from([0.5, 1.0, 3.0]),
    seed=st.integers(0, 10_000),
    banned=st.sets(st.integers(0, 25), max_size=5),
)
def test_prior_guided_search_scores_generator_plus_weighted_prior(
    titles: list[list[int]], with_end: bool, weight: float, seed: int, banned: set[int]
) -> None:
    """Hybrid decoding: with a wide beam the result is the top of log p_gen + weight · log p_prior
    over the unbanned items, whatever the trie's shape."""
    sequences = unique(titles) if with_end else unique([t[:1] * 3 if len(t) < 3 else t[:3] for t in titles])
    end = VOCAB - 1 if with_end else None
    trie = Trie(sequences, end_token=end)
    gen = torch.Generator().manual_seed(seed + 1)
    prior = torch.log_softmax(torch.randn(len(sequences), generator=gen, dtype=torch.float64), 0)
    prior[[i for i in banned if i < len(sequences)]] = float("-inf")
    prior = torch.log_softmax(prior, 0) if torch.isfinite(prior).any() else prior
    stepper = TableStepper(seed)
    guided = PriorGuided(stepper, trie, prior, weight)
    found = constrained_beam_search(guided, trie, beams=len(sequences), k=len(sequences), banned=banned)
    scored = [
        (i, stepper.logprob(s, end) + weight * float(prior[i])) for i, s in enumerate(sequences) if i not in banned
    ]
    assert_same(found, sorted(scored, key=lambda x: (-x[1], x[0])))


def test_node_log_mass_sums_the_items_below() -> None:
    sequences = [[0, 1], [0, 2], [1], [1, 0]]  # item 2 sits at an inner node, item 3 below it
    trie = Trie(sequences, end_token=VOCAB - 1)
    logp = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0, -1.0], dtype=torch.float64), 0).numpy()
    mass = node_log_mass(trie, logp)
    assert mass[ROOT] == pytest.approx(0.0, abs=1e-12)
    assert mass[trie.walk([0])] == pytest.approx(math.log(math.exp(logp[0]) + math.exp(logp[1])))
    assert mass[trie.walk([1])] == pytest.approx(math.log(math.exp(logp[2]) + math.exp(logp[3])))
    assert mass[trie.walk([1, 0])] == pytest.approx(logp[3])
