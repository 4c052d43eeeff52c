"""Grounded explanations: why an item is recommended, citing only what the user actually chose.

The candidates to cite come first, not from the LLM: the history items most similar to the
recommended one, by any :class:`~lmrec.rerank.similarity.ItemSimilarity` (a model's item vectors,
co-occurrence in the training data, genres).

With a local LM (:class:`~lmrec.llm.lm.LocalLM`) the sentence is written inside a frame::

    Because you liked "T1" [and "T2"], you may also like "X"<reason words>.

where X is the recommended item. Each title slot is decoded under a prefix trie of the candidates' titles
(:func:`~lmrec.llm.trie.constrained_beam_search`), so the LM chooses *which* history titles to
cite and can only copy them; whether a second title follows is the LM's choice too, between the
two connectors. The reason words are free text, except that no token holding a quote or a line
break may be generated, so no further title can be quoted. Any other chat model (an HTTP
endpoint) writes the sentence freely.

Either way the sentence is then checked: if it names any catalog title that is not a cited
history item (an invented reason, also in the free reason words), or names none of the cited ones
(no reason at all), the explanation falls back to a plain template over the most similar history
items. Titles are spoken as people say them (:func:`~lmrec.text.templates.spoken_title`: "The
Lion King", not "Lion King, The (1994)"), and every title in an explanation is one the user
interacted with.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmrec.llm.lm import ChatLM, LocalLM
from lmrec.llm.prompts import explanation_messages, scrub_pii
from lmrec.llm.trie import Trie, constrained_beam_search
from lmrec.rerank.similarity import ItemSimilarity
from lmrec.text.templates import spoken_title

MIN_TITLE_CHARS = 5  # shorter titles ("It", "Heat") match ordinary words; they are not checked
OPENING = "Because you liked"
THEN = "you may also like"
LEAD = ", which"  # leads the reason words into saying what the recommended item is like
QUOTE = '"'
BANNED_CHARS = ('"', "\n", "\r", "“", "”", "«", "»")  # no token of the reason words may hold these
SENTENCE_END = (".", "!", "?")
MIN_REASON_TOKENS = 3  # the end of the reply is not allowed before this many reason tokens


@dataclass(frozen=True)
class Explanation:
    item: int
    text: str
    cited: list[int]  # history item rows the explanation rests on
    generated: bool  # False: the LLM's sentence failed the check (or no LLM) and the template was used
    tokens: int = 0  # tokens of the LLM's reply (forced frame words included), also when it failed
    draft: str = ""  # the LLM's sentence, also when it failed the check


class Explainer:
    """Explain recommendations from item similarity and (optionally) an LLM.

    ``cite`` is the most history titles one explanation names; a local LM chooses them among the
    ``choices`` history items most similar to the recommended one.
    """

    def __init__(
        self,
        titles: list[str],
        similarity: ItemSimilarity,
        lm: ChatLM | None = None,
        cite: int = 2,
        choices: int = 4,
    ) -> None:
        self.titles = [str(t) for t in titles]
        self.spoken = [spoken_title(t) for t in self.titles]
        self.similarity, self.lm, self.cite, self.choices = similarity, lm, cite, max(cite, choices)
        self._patterns = {
            row: re.compile("|".join(rf"(?<!\w){re.escape(f)}(?!\w)" for f in forms), re.IGNORECASE)
            for row, t in enumerate(self.titles)
            if (forms := _forms(t))
        }
        self._banned: torch.Tensor | None = None  # reason-word tokens the local LM may not emit
        self._ends = torch.zeros(0, dtype=torch.bool)

    def evidence(self, history: np.ndarray, item: int, n: int | None = None) -> list[int]:
        """The ``n`` (default ``cite``) distinct history items most similar to ``item``, most similar first."""
        unique = np.array(list(dict.fromkeys(int(h) for h in history if h != item)), dtype=np.int64)
        if len(unique) == 0:
            return []
        sims = self.similarity.pairwise(np.concatenate([[item], unique])[None])[0, 0, 1:]
        return [int(unique[j]) for j in np.argsort(-sims, kind="stable")[: self.cite if n is None else n]]

    def mentioned(self, text: str) -> set[int]:
        """Catalog items whose title appears in ``text`` (titles of at least MIN_TITLE_CHARS), in any
        of the forms a sentence may use: as catalogued, spoken, without its article or alternate title."""
        return {row for row, pattern in self._patterns.items() if pattern.search(text)}

    def template(self, cited: list[int]) -> str:
        """The plain sentence over ``cited`` history items, used when no LLM sentence passes."""
        return f"Because you liked {_join([self.spoken[c] for c in cited])}."

    def grounded(self, text: str, cited: list[int], item: int) -> bool:
        """Whether ``text`` names at least one of ``cited`` (where any is long enough to look for)
        and no other catalog title than those and ``item``."""
        checkable = [c for c in cited if c in self._patterns]
        gives_reason = not checkable or any(self._patterns[c].search(text) for c in checkable)
        return bool(text) and gives_reason and not self.mentioned(self._without(text, [*cited, item]))

    def explain(self, history: np.ndarray, item: int, max_new_tokens: int = 48) -> Explanation:
        pool = self.evidence(history, item, self.choices)
        cited = pool[: self.cite]
        if not cited:
            return Explanation(item, f"{self.spoken[item]} is popular with other users.", [], generated=False)
        template = self.template(cited)
        if self.lm is None:
            return Explanation(item, template, cited, generated=False)
        if isinstance(self.lm, LocalLM):
            text, chosen, tokens = self._framed(self.lm, pool, item, max_new_tokens)
        else:
            messages = explanation_messages(self.spoken[item], [self.spoken[c] for c in cited])
            reply = self.lm.chat(messages, max_new_tokens)
            text, chosen, tokens = scrub_pii(reply.text.strip().split("\n")[0].strip()), cited, reply.tokens
        if not chosen or not self.grounded(text, chosen, item):
            return Explanation(item, template, cited, generated=False, tokens=tokens, draft=text)
        return Explanation(item, text, chosen, generated=True, tokens=tokens, draft=text)

    # -- the frame, for a local LM ---------------------------------------------------------------
    def _framed(self, lm: LocalLM, pool: list[int], item: int, max_new_tokens: int) -> tuple[str, list[int], int]:
        """The framed sentence, the history items its title slots chose, and the reply's tokens."""
        quote = lm.encode(QUOTE)
        names = {c: scrub_pii(self.spoken[c]) for c in pool}
        slots: dict[tuple[int, ...], int] = {}  # title tokens -> item; titles that tokenise alike keep the first
        for c in pool:
            tokens = tuple(lm.encode(names[c]))
            if tokens and QUOTE not in names[c] and quote[0] not in tokens:
                slots.setdefault(tokens, c)
        if len(quote) != 1 or quote[0] == lm.tokenizer.unk_token_id or not slots:
            return "", [], 0  # no title can be placed between quotes: the template it is
        end = quote[0]
        candidates = list(slots.values())
        trie = Trie([list(s) for s in slots], end_token=end)
        messages = explanation_messages(self.spoken[item], [names[c] for c in candidates])
        opening = lm.encode(f"{OPENING} {QUOTE}")
        cursor = _Cursor(lm, lm.prompt_ids(messages) + opening)
        reply = list(opening)
        chosen: list[int] = []  # trie slots, in the order cited
        joins = [lm.encode(f" and {QUOTE}"), lm.encode(",")]  # another title, or the reason words
        text = f"{OPENING} {QUOTE}"
        while True:
            found = constrained_beam_search(cursor.fork(), trie, beams=len(candidates), k=1, banned=chosen)
            slot = found[0][0]
            chosen.append(slot)
            cursor.feed([*trie.sequence(slot), end])
            reply += [*trie.sequence(slot), end]
            text += names[candidates[slot]] + QUOTE
            more = len(chosen) < min(self.cite, len(candidates))
            pick = constrained_beam_search(cursor.fork(), Trie(joins), beams=2, k=1)[0][0] if more else 1
            cursor.feed(joins[pick])
            reply += joins[pick]
            if pick == 1:
                text += ","
                break
            text += f" and {QUOTE}"
        then = f" {THEN} {QUOTE}{scrub_pii(self.spoken[item])}{QUOTE}{LEAD}"  # the sentence is about the recommendation
        cursor.feed(lm.encode(then))
        reply += lm.encode(then)
        text += then
        reason = self._reason(lm, cursor, max(MIN_REASON_TOKENS, max_new_tokens - len(reply)))
        words = scrub_pii(lm.decode(reason)).strip().rstrip(" ,;:-")
        if not words.strip("".join(SENTENCE_END) + " "):
            text = text.removesuffix(LEAD) + "."  # no reason words: the sentence ends at the item
        else:
            text += " " + (words if words.endswith(SENTENCE_END) else words + ".")
        return text, [candidates[s] for s in chosen], len(reply) + len(reason)

    def _reason(self, lm: LocalLM, cursor: _Cursor, limit: int) -> list[int]:
        """Greedy reason words up to the end of the sentence, the reply, or ``limit`` tokens; no
        token may hold a quote or a line break, and the reply may not end before MIN_REASON_TOKENS."""
        banned = self._banned_tokens(lm, cursor.next.shape[-1])
        out: list[int] = []
        while len(out) < limit:
            logits = cursor.next.masked_fill(banned, float("-inf"))
            if len(out) < MIN_REASON_TOKENS:
                logits = logits.masked_fill(self._ends, float("-inf"))
            token = int(torch.argmax(logits))
            if token == lm.eos_id:
                break
            out.append(token)
            if lm.decode([token]).rstrip().endswith(SENTENCE_END):
                break
            cursor.feed([token])
        return out

    def _banned_tokens(self, lm: LocalLM, vocab: int) -> torch.Tensor:
        """A (vocab,) mask of the tokens that hold a banned character, or are special (EOS apart)."""
        if self._banned is None or len(self._banned) != vocab:
            tokenizer = lm.tokenizer
            n = min(vocab, len(tokenizer))
            texts = tokenizer.batch_decode([[i] for i in range(n)])
            banned = torch.ones(vocab, dtype=torch.bool)  # ids past the tokenizer's are never words
            banned[:n] = torch.tensor([any(ch in t for ch in BANNED_CHARS) for t in texts])
            banned[[int(i) for i in tokenizer.all_special_ids if int(i) < vocab]] = True
            banned[lm.eos_id] = False
            self._banned = banned
            self._ends = torch.zeros(vocab, dtype=torch.bool)  # what ends the reply or the sentence
            self._ends[:n] = torch.tensor([t.rstrip().endswith(SENTENCE_END) for t in texts])
            self._ends[lm.eos_id] = True
        return self._banned

    def _without(self, text: str, rows: list[int]) -> str:
        """``text`` with the titles of ``rows`` blanked out, longest form first, so that what is left
        can be searched for titles that should not be there ("Die Hard 2" cited is not "Die Hard")."""
        forms = {f for r in rows for f in _forms(self.titles[r], checked=False)}
        for form in sorted(forms, key=len, reverse=True):
            text = re.sub(rf"(?<!\w){re.escape(form)}(?!\w)", " ", text, flags=re.IGNORECASE)
        return text


class _Cursor:
    """A local LM partway through one reply: the KV cache of everything fed so far and the
    log-probs of the next token. :meth:`fork` hands a copy to a beam search, which reorders and
    extends its own cache, so the cursor stays where it was."""

    def __init__(self, lm: LocalLM, ids: list[int]) -> None:
        self.lm = lm
        self.past: Any = None
        self.next = torch.empty(0)
        self.feed(ids)

    def feed(self, tokens: list[int]) -> None:
        if not tokens:
            return
        ids = torch.tensor([tokens], device=self.lm.device)
        with torch.no_grad():
            out = self.lm.model(input_ids=ids, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        self.next = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()

    def fork(self) -> _Fork:
        return _Fork(self.lm, copy.deepcopy(self.past), self.next)


class _Fork:
    """The :class:`~lmrec.llm.trie.Stepper` over a copy of a cursor's cache."""

    def __init__(self, lm: LocalLM, past: Any, first: torch.Tensor) -> None:
        self.lm, self.past, self.first = lm, past, first

    def start(self) -> torch.Tensor:
        return self.first

    def advance(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        self.past.reorder_cache(torch.tensor(parents, device=self.lm.device))
        ids = torch.tensor(tokens, device=self.lm.device).unsqueeze(1)
        with torch.no_grad():
            out = self.lm.model(input_ids=ids, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()


def _forms(title: str, checked: bool = True) -> list[str]:
    """The ways a sentence may write ``title``: as catalogued without its year, spoken, and, where
    that leaves two words or more, without a moved article or an alternate title in parentheses
    ("Lion King" is looked for, but "Quest, The" not as "quest", nor "Seven (Se7en)" as "seven").
    With ``checked`` only the forms of at least MIN_TITLE_CHARS (shorter ones match ordinary words)."""
    bare = re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip()
    forms = [bare, spoken_title(title)]
    shorter = [spoken_title(title, article=False), *(re.sub(r"\s*\([^()]*\)$", "", f).strip() for f in forms)]
    out = list(dict.fromkeys([*forms, *(f for f in shorter if len(f.split()) >= 2)]))
    return [f for f in out if f and len(f) >= MIN_TITLE_CHARS] if checked else [f for f in out if f]


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
