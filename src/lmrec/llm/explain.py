"""Grounded explanations: why an item is recommended, citing only what the user actually chose.

The items to cite are picked first, not by the LLM: the history items most similar to the
recommended one, by any :class:`~lmrec.rerank.similarity.ItemSimilarity` (a model's item vectors,
co-occurrence in the training data, genres). The LLM then writes one sentence about the
recommendation that may mention only those items. The sentence is checked: if it names any catalog
title that is not a cited history item (an invented reason), or names none of the cited ones (no
reason at all), the explanation falls back to a plain template over the cited items. Either way
every title in an explanation is one the user interacted with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lmrec.llm.lm import ChatLM
from lmrec.llm.prompts import explanation_messages, scrub_pii
from lmrec.rerank.similarity import ItemSimilarity

MIN_TITLE_CHARS = 5  # shorter titles ("It", "Heat") match ordinary words; they are not checked


@dataclass(frozen=True)
class Explanation:
    item: int
    text: str
    cited: list[int]  # history item rows the explanation rests on
    generated: bool  # False: the LLM's sentence failed the check (or no LLM) and the template was used
    tokens: int = 0


class Explainer:
    """Explain recommendations from item similarity and (optionally) an LLM."""

    def __init__(self, titles: list[str], similarity: ItemSimilarity, lm: ChatLM | None = None, cite: int = 2) -> None:
        self.titles = [str(t) for t in titles]
        self.similarity, self.lm, self.cite = similarity, lm, cite
        self._patterns = {
            row: re.compile(rf"(?<!\w){re.escape(_bare(t))}(?!\w)", re.IGNORECASE)
            for row, t in enumerate(self.titles)
            if len(_bare(t)) >= MIN_TITLE_CHARS
        }

    def evidence(self, history: np.ndarray, item: int) -> list[int]:
        """The ``cite`` distinct history items most similar to ``item``, most similar first."""
        unique = np.array(list(dict.fromkeys(int(h) for h in history if h != item)), dtype=np.int64)
        if len(unique) == 0:
            return []
        sims = self.similarity.pairwise(np.concatenate([[item], unique])[None])[0, 0, 1:]
        return [int(unique[j]) for j in np.argsort(-sims, kind="stable")[: self.cite]]

    def mentioned(self, text: str) -> set[int]:
        """Catalog items whose title appears in ``text`` (titles of at least MIN_TITLE_CHARS)."""
        return {row for row, pattern in self._patterns.items() if pattern.search(text)}

    def explain(self, history: np.ndarray, item: int, max_new_tokens: int = 48) -> Explanation:
        cited = self.evidence(history, item)
        if not cited:
            return Explanation(item, f"{self.titles[item]} is popular with other users.", [], generated=False)
        template = f"Because you liked {_join([self.titles[c] for c in cited])}."
        if self.lm is None:
            return Explanation(item, template, cited, generated=False)
        reply = self.lm.chat(explanation_messages(self.titles[item], [self.titles[c] for c in cited]), max_new_tokens)
        text = scrub_pii(reply.text.strip().split("\n")[0].strip())
        checkable = [c for c in cited if c in self._patterns]  # titles long enough to look for
        gives_reason = not checkable or any(self._patterns[c].search(text) for c in checkable)
        if not text or not gives_reason or self.mentioned(self._without(text, [*cited, item])):
            return Explanation(item, template, cited, generated=False, tokens=reply.tokens)
        return Explanation(item, text, cited, generated=True, tokens=reply.tokens)

    def _without(self, text: str, rows: list[int]) -> str:
        """``text`` with the titles of ``rows`` blanked out, longest first, so that what is left can
        be searched for titles that should not be there ("Die Hard 2" cited is not "Die Hard")."""
        for title in sorted({_bare(self.titles[r]) for r in rows}, key=len, reverse=True):
            text = re.sub(rf"(?<!\w){re.escape(title)}(?!\w)", " ", text, flags=re.IGNORECASE)
        return text


def _bare(title: str) -> str:
    """A title without a trailing year: "Heat (1995)" → "Heat"."""
    return re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip()


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
