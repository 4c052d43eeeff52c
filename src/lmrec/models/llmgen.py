"""A language model that writes the recommended items itself (``llm-gen``).

Fine-tuning: supervised, with LoRA adapters (``peft``), on prompts built from a user's history
(titles, most recent last, within a token budget; :mod:`lmrec.llm.prompts`) whose answer is the
title of the next item. Generation: beam search under a prefix trie of the catalog's titles
(:mod:`lmrec.llm.trie`), so every generated title is an item of the catalog and none is in the
user's history; the beams' log-probabilities are the scores, and items outside the generated list
rank after it (by popularity), so the model is evaluated by the same full-ranking harness as any
other. :func:`hallucination_rate` measures what the same model writes without the trie.

With ``item_ids=codes`` the model writes semantic IDs instead of titles (P5's collaborative
indexing, LC-Rec): every item gets a code of ``levels`` + 1 codewords (:class:`~lmrec.models.tiger.
SemanticItems`, from the item text, a trained SASRec's rows or both), each codeword is a new token
of the LM's vocabulary (``<a_3>``, ``<b_17>``, ...; their embeddings train along with LoRA), the
history shows each title followed by its code, and the answer is the next item's code.

The base model is ``config.lm``: ``"smollm2"`` (the packaged SmolLM2-135M-Instruct) or any local
Hugging Face model directory. Checkpoints hold only the LoRA weights (and the new tokens' rows);
loading reads the base model again from the same place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.llm.lm import DEFAULT_LM, LocalLM, answer_loss, load_lm, with_lora
from lmrec.llm.prompts import history_messages
from lmrec.llm.semantic_ids import code_sizes
from lmrec.llm.trie import Trie, constrained_beam_search, generated_ranking
from lmrec.models.base import FitOptions, Recommender
from lmrec.models.tiger import SemanticIDConfig, SemanticItems
from lmrec.text import choose_template, item_texts
from lmrec.train.trainer import TrainConfig, numpy_rng, step_rounds


@dataclass
class GenerativeConfig(SemanticIDConfig):  # the semantic-ID options apply with item_ids=codes
    lm: str = DEFAULT_LM  # "smollm2" or a local Hugging Face model directory
    item_ids: str = "title"  # what the LM writes: "title", or "codes" (semantic IDs as new tokens)
    lora_r: int = 8  # 0: fine-tune nothing (zero-shot generation)
    lora_alpha: int = 16
    steps: int = 100  # optimisation steps of supervised fine-tuning
    batch_size: int = 8
    lr: float = 5e-4
    max_history: int = 20  # most recent titles put in a prompt
    prompt_budget: int = 256  # tokens of the user message at most (older titles dropped first)
    beams: int = 10
    max_title_tokens: int = 48

    def validate(self) -> None:
        super().validate()
        if self.item_ids not in ("title", "codes"):
            raise ConfigError(f"item_ids must be title or codes, got {self.item_ids!r}")
        if self.item_ids == "codes" and (self.lora_r == 0 or self.steps == 0):
            raise ConfigError("item_ids=codes needs fine-tuning (lora_r > 0, steps > 0): new tokens start untrained")
        if self.lora_r < 0 or self.steps < 0 or self.batch_size < 1 or self.beams < 1 or self.max_history < 1:
            raise ConfigError("need lora_r >= 0, steps >= 0, batch_size >= 1, beams >= 1, max_history >= 1")
        if self.lr <= 0 or self.prompt_budget < 16:
            raise ConfigError("need lr > 0 and prompt_budget >= 16")


class GenerativeLLM(SemanticItems, Recommender):
    """SmolLM2 (or another causal LM) fine-tuned to write the next item's title or semantic ID."""

    name = "llm-gen"
    config_class = GenerativeConfig
    config: GenerativeConfig
    report_users = 100  # seconds per user on a CPU: the after-training report reads a sample
    generated_tokens = 0  # tokens decoded by generate(), summed over beams (for cost reports)

    devices = ("cpu", "cuda", "mps")

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg = self.config
        titles = item_texts(train.catalog, choose_template(train, default="{title}"))  # refuses a catalog of IDs
        self.lm = load_lm(cfg.lm, options.cache_dir, options.device)
        codes, usage = self._semantic_ids(train, options) if cfg.item_ids == "codes" else (None, None)
        self._set_items([self.lm.encode(str(t))[: cfg.max_title_tokens] for t in titles], codes)
        if cfg.lora_r > 0:
            self.lm.model = with_lora(self.lm.model, cfg.lora_r, cfg.lora_alpha, new_tokens=self.code_tokens)
        self.popularity = torch.from_numpy(train.item_popularity().astype(np.float32))
        self.training_log = self._finetune(train, options) if cfg.lora_r > 0 and cfg.steps > 0 else {}
        if usage is not None:
            self.training_log["codes"] = usage

    def _set_items(self, title_tokens: list[list[int]], codes: np.ndarray | None) -> None:
        """What the prompts show of each item and what the LM writes for it. Titles: the prompts
        read the title tokens back as text and the answer is those tokens. Codes: each codeword
        becomes a new token of the vocabulary (added before LoRA wraps the model), the prompts
        show "title <a_3><b_17>..." and the answer is the code's tokens. Answers end with
        end-of-sequence in the trie, so "Heat" and "Heat Wave" are two answers."""
        self.title_tokens = [list(map(int, s)) for s in title_tokens]
        self.titles = [self.lm.decode(s) for s in self.title_tokens]
        self.codes = None if codes is None else np.asarray(codes, dtype=np.int64)
        self.code_tokens: list[int] = []
        if self.codes is None:
            self.labels, self.answers = self.titles, self.title_tokens
        else:
            self.code_tokens = _add_code_tokens(self.lm, self.codes)
            words = [[_code_word(level, int(v)) for level, v in enumerate(row)] for row in self.codes]
            self.labels = [f"{t} {''.join(w)}" for t, w in zip(self.titles, words, strict=True)]
            self.answers = [[int(i) for i in self.lm.tokenizer.convert_tokens_to_ids(w)] for w in words]
        self.trie, self.trie_rows = _title_trie(self.answers, self.lm.eos_id)

    def _messages(self, rows: np.ndarray) -> list[dict[str, str]]:
        labels = [self.labels[int(r)] for r in rows[-self.config.max_history :]]
        return history_messages(labels, lambda s: len(self.lm.encode(s)), budget=self.config.prompt_budget)

    # -- fine-tuning ----------------------------------------------------------------------------
    def _finetune(self, train: Dataset, options: FitOptions) -> dict[str, Any]:
        """``steps`` steps of next-title SFT on (history prefix → next title), loss on the answer only."""
        cfg = self.config
        task = TitleTask(self, QueryBatch.from_interactions(train.interactions, np.arange(train.n_users)))
        rounds = step_rounds(cfg.steps)
        config = TrainConfig(epochs=len(rounds), lr=cfg.lr, desc="llm-gen sft")
        log = self._train(task, config, options, options.torch_generator(), total_steps=cfg.steps)
        self.lm.model.eval()
        return log

    # -- generation -----------------------------------------------------------------------------
    def generate(self, history: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` (item row, log-prob) for one history, best first: catalog items only,
        none of the history."""
        prompt = self.lm.prompt_ids(self._messages(history))
        banned = np.flatnonzero(np.isin(self.trie_rows, history)).tolist()
        stepper = CachedStepper(self.lm, prompt)
        found = constrained_beam_search(stepper, self.trie, beams=max(self.config.beams, k), k=k, banned=banned)
        self.generated_tokens += stepper.tokens
        return [(int(self.trie_rows[i]), logp) for i, logp in found]

    def score(self, batch: QueryBatch) -> torch.Tensor:
        """The generated titles' log-probs, best first; items not generated rank after them by
        popularity (:func:`~lmrec.llm.trie.generated_ranking`). An empty history gets popularity."""
        self.lm.model.eval()

        def generate(row: int, history: np.ndarray) -> list[tuple[int, float]]:
            return self.generate(history, min(self.config.beams, self.n_items - len(set(history.tolist()))))

        return generated_ranking(batch, self.popularity, generate)

    # -- persistence ----------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        width = max(1, max(len(t) for t in self.title_tokens))
        tokens = torch.full((self.n_items, width), -1, dtype=torch.long)
        for row, t in enumerate(self.title_tokens):
            tokens[row, : len(t)] = torch.tensor(t, dtype=torch.long)
        out = {"popularity": self.popularity, "title_tokens": tokens}
        if self.codes is not None:
            out["codes"] = torch.from_numpy(self.codes)
        if self.config.lora_r > 0:
            from peft import get_peft_model_state_dict

            adapters = get_peft_model_state_dict(self.lm.model, save_embedding_layers=False)
            out.update({f"lora.{k}": v.clone() for k, v in adapters.items()})  # clone: tied rows share memory
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Read the base model again from ``config.lm`` (with the code tokens added, as at fit),
        then apply the saved adapters."""
        cfg = self.config
        fresh = not hasattr(self, "lm")
        if fresh:
            self.lm = load_lm(cfg.lm, None, str(getattr(self, "device", "cpu")))
        codes = tensors["codes"].numpy() if "codes" in tensors else None
        self._set_items([[int(x) for x in row if x >= 0] for row in tensors["title_tokens"].tolist()], codes)
        if fresh and cfg.lora_r > 0:
            self.lm.model = with_lora(self.lm.model, cfg.lora_r, cfg.lora_alpha, new_tokens=self.code_tokens)
        if cfg.lora_r > 0:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.lm.model, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
        self.lm.model.eval()
        self.popularity = tensors["popularity"]


class CachedStepper:
    """The :class:`~lmrec.llm.trie.Stepper` of a local LM: the prompt runs once, then each step
    feeds one token per beam through the KV cache, reordered to follow the beams."""

    def __init__(self, lm: LocalLM, prompt: list[int]) -> None:
        self.lm, self.prompt = lm, prompt
        self.past: Any = None
        self.tokens = 0  # tokens decoded, summed over beams

    def start(self) -> torch.Tensor:
        ids = torch.tensor([self.prompt], device=self.lm.device)
        with torch.no_grad():
            out = self.lm.model(input_ids=ids, use_cache=True)
        self.past = out.past_key_values
        return torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()

    def advance(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        self.past.reorder_cache(torch.tensor(parents, device=self.lm.device))
        self.tokens += len(tokens)
        ids = torch.tensor(tokens, device=self.lm.device).unsqueeze(1)
        with torch.no_grad():
            out = self.lm.model(input_ids=ids, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()


def hallucination_rate(model: GenerativeLLM, histories: list[np.ndarray], max_new_tokens: int = 32) -> dict[str, Any]:
    """Greedy, unconstrained generation for each history: the share of answers that are not a
    catalog title (compared loosely, :func:`_bare_title`), the share that repeat a title of the
    history (in the catalog, but not a recommendation), and how many tokens that took."""
    known = {_bare_title(t) for t in model.titles}
    invented, repeated, tokens, seconds = 0, 0, 0, 0.0
    examples: list[str] = []
    for h in histories:
        g = model.lm.chat(model._messages(h), max_new_tokens=max_new_tokens)
        answer = _bare_title(g.text.strip().splitlines()[0]) if g.text.strip() else ""
        tokens += g.tokens
        seconds += g.seconds
        if answer not in known:
            invented += 1
            if len(examples) < 5:
                examples.append(answer)
        elif answer in {_bare_title(model.titles[int(i)]) for i in h}:
            repeated += 1
    n = max(1, len(histories))
    return {
        "rate": invented / n,
        "history_repeats": repeated / n,
        "tokens_per_answer": tokens / n,
        "seconds_per_answer": seconds / n,
        "examples": examples,
    }


def _bare_title(text: str) -> str:
    """A title as written in a free answer, compared loosely: without list numbering or bullets
    ("1. ", "- "), quotes, a final period or a trailing year, in lower case."""
    text = re.sub(r"^\s*(?:\d+[.)]|[-*])\s*", "", text).strip(" \"'.")
    return re.sub(r"\s*\(\d{4}\)$", "", text).strip(" \"'.").lower()


def _code_word(level: int, value: int) -> str:
    """The token of codeword ``value`` at ``level`` of a semantic ID: <a_0>, <b_5>, ..."""
    return f"<{chr(ord('a') + level)}_{value}>"


def _add_code_tokens(lm: LocalLM, codes: np.ndarray) -> list[int]:
    """Add one token per (level, codeword) of ``codes`` to the LM's tokenizer and embedding table
    (new rows at the mean of the old ones, transformers' default); their ids, in order. Adding
    tokens that are already there (a model loaded twice) changes nothing."""
    words = [_code_word(level, v) for level, size in enumerate(code_sizes(codes)) for v in range(int(size))]
    if lm.tokenizer.add_tokens(words) and lm.model.get_input_embeddings().weight.shape[0] < len(lm.tokenizer):
        lm.model.resize_token_embeddings(len(lm.tokenizer))
    return [int(i) for i in lm.tokenizer.convert_tokens_to_ids(words)]


def _title_trie(sequences: list[list[int]], end: int) -> tuple[Trie, np.ndarray]:
    """The catalog's titles as a trie, and the item row of each trie item. Titles that tokenise
    the same keep their first item: a generated string cannot tell the others apart."""
    first: dict[tuple[int, ...], int] = {}
    for row, s in enumerate(sequences):
        if s:
            first.setdefault(tuple(s), row)
    rows = np.array(sorted(first.values()), dtype=np.int64)
    return Trie([sequences[r] for r in rows], end_token=end), rows


class TitleTask:
    """Next-item SFT for the Trainer: batches of (prompt from a random history prefix, the next
    item's answer — title or code — + end of sequence), ten steps an "epoch"; the loss is on the
    answer tokens only."""

    def __init__(self, model: GenerativeLLM, histories: QueryBatch) -> None:
        self.model, self.module, self.histories = model, model.lm.model, histories
        self.users = [u for u in range(len(histories)) if len(histories.history(u)) >= 2]
        if not self.users:
            raise ConfigError("llm-gen needs users with at least two training interactions")
        self.rounds = step_rounds(model.config.steps)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[list[tuple[list[int], list[int]]]]:
        model, lm, cfg = self.model, self.model.lm, self.model.config
        rng = numpy_rng(gen)
        for _ in range(self.rounds[epoch]):
            examples = []
            for u in rng.choice(self.users, size=cfg.batch_size):
                h = self.histories.history(int(u))
                t = int(rng.integers(1, len(h)))
                prompt = lm.prompt_ids(model._messages(h[:t]))
                answer = [*model.answers[int(h[t])], lm.eos_id]
                examples.append((prompt, answer))
            yield examples

    def loss(
        self, module: nn.Module, examples: list[tuple[list[int], list[int]]], gen: torch.Generator
    ) -> torch.Tensor:
        return answer_loss(self.model.lm, examples, module)
