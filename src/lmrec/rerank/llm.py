"""An LLM re-ranks a fast model's candidates (listwise), with position bias averaged out.

A prompt shows the user's history (titles, most recent last) and the candidates, each behind a
one-token letter label (A, B, C, ...); the LLM's next-token distribution over those letters, read
in one forward pass, scores every candidate at once. LLMs favour early positions in such lists,
so the candidates are shown in ``permutations`` random orders and each candidate's log-probability
is averaged over them (Hou et al. 2024, "Large Language Models are Zero-Shot Rankers"). Zero-shot
by default; :meth:`LLMReranker.finetune` trains LoRA adapters to put the true next item's letter
first, on lists from the same fast model.

It implements the evaluator's :class:`~lmrec.evaluate.evaluator.Reranker` protocol, so
``evaluate(model, eval_set, reranker=LLMReranker(...), candidates=N)`` measures it under the same
full-ranking protocol as everything else.
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.llm.lm import LocalLM, answer_loss, with_lora
from lmrec.llm.prompts import scrub_pii
from lmrec.train.trainer import TrainConfig, Trainer, TrainerOptions, numpy_rng, step_rounds

LABELS = string.ascii_uppercase
SYSTEM = "You are a recommender system. You pick the item a user is most likely to choose next."


class LLMReranker:
    """Re-order each query's top candidates by an LLM's choice among them."""

    def __init__(
        self,
        lm: LocalLM,
        titles: list[str],
        candidates: int = 20,
        permutations: int = 3,
        max_history: int = 20,
        seed: int = 0,
    ) -> None:
        if not 2 <= candidates <= len(LABELS):
            raise ConfigError(f"an LLM re-ranks 2..{len(LABELS)} candidates (one letter each), got {candidates}")
        if permutations < 1:
            raise ConfigError("permutations must be >= 1")
        self.lm, self.titles = lm, [scrub_pii(str(t)) for t in titles]
        self.candidates, self.permutations, self.max_history, self.seed = candidates, permutations, max_history, seed
        self.label_ids = [_single_token(lm, c) for c in LABELS[:candidates]]
        self.seconds = 0.0  # time spent in the LLM, for latency reports
        self.calls = 0

    def __repr__(self) -> str:
        return f"LLMReranker({self.lm.name}, candidates={self.candidates}, permutations={self.permutations})"

    # -- prompts --------------------------------------------------------------------------------
    def messages(self, history: np.ndarray, candidates: list[int]) -> list[dict[str, str]]:
        recent = [self.titles[int(i)] for i in history[-self.max_history :]]
        watched = "\n".join(f"- {t}" for t in recent)
        options = "\n".join(f"{LABELS[j]}. {self.titles[c]}" for j, c in enumerate(candidates))
        user = (
            f"The user chose these items, oldest first:\n{watched}\n\n"
            f"Which of these will the user choose next?\n{options}\n\nAnswer with one letter."
        )
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def label_logprobs(self, history: np.ndarray, candidates: list[int]) -> torch.Tensor:
        """log p(letter j | prompt) over the shown letters, for candidates in the order given."""
        ids = torch.tensor([self.lm.prompt_ids(self.messages(history, candidates))], device=self.lm.device)
        logits = self.lm.model(input_ids=ids).logits[0, -1].float()
        return torch.log_softmax(logits[self.label_ids[: len(candidates)]], dim=0).cpu()

    def candidate_scores(self, history: np.ndarray, candidates: list[int], rng: np.random.Generator) -> np.ndarray:
        """Each candidate's label log-probability, averaged over random presentation orders."""
        total = np.zeros(len(candidates))
        with torch.no_grad():
            for p in range(self.permutations):
                order = np.arange(len(candidates)) if p == 0 else rng.permutation(len(candidates))
                logp = self.label_logprobs(history, [candidates[j] for j in order]).numpy()
                total[order] += logp
        return total / self.permutations

    # -- the Reranker protocol ------------------------------------------------------------------
    def __call__(self, batch: QueryBatch, items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        started = time.perf_counter()
        self.lm.model.eval()
        rng = np.random.default_rng(self.seed)
        out = np.full((len(batch), k), -1, dtype=np.int64)
        for r in range(len(batch)):
            row = [int(i) for i in items[r] if i >= 0]
            head, tail = row[: self.candidates], row[self.candidates :]
            if len(head) >= 2:
                llm = self.candidate_scores(batch.history(r), head, rng)
                head = [head[j] for j in np.argsort(-llm, kind="stable")]
            chosen = (head + tail)[:k]
            out[r, : len(chosen)] = chosen
        self.seconds += time.perf_counter() - started
        self.calls += len(batch)
        return out

    # -- fine-tuning ----------------------------------------------------------------------------
    def finetune(
        self,
        train: Dataset,
        base: Any,
        steps: int,
        batch_size: int = 4,
        lr: float = 5e-4,
        lora_r: int = 8,
        seed: int = 0,
    ) -> list[float]:
        """LoRA-tune the LLM to answer with the letter of each user's true next item, shown among
        the base model's candidates for the history before it (in a random order)."""

        if not any("lora_" in n for n, _ in self.lm.model.named_parameters()):
            self.lm.model = with_lora(self.lm.model, lora_r, 2 * lora_r)
        histories = QueryBatch.from_interactions(train.interactions, np.arange(train.n_users))
        task = LetterTask(self, base, histories, steps, batch_size)
        config = TrainConfig(epochs=len(task.rounds), lr=lr, desc="llm re-ranker")
        trainer = Trainer(config, TrainerOptions(device=str(self.lm.device)))
        log = trainer.fit(task, torch.Generator().manual_seed(seed), total_steps=steps)
        self.lm.model.eval()
        return list(log["losses"])


class LetterTask:
    """The re-ranker's fine-tuning for the Trainer: the base model's candidates for a history
    prefix, the true next item among them in a random order; the loss is on its letter only."""

    def __init__(self, reranker: LLMReranker, base: Any, histories: QueryBatch, steps: int, batch_size: int) -> None:
        self.reranker, self.base, self.histories, self.batch_size = reranker, base, histories, batch_size
        self.module = reranker.lm.model
        self.users = [u for u in range(len(histories)) if len(histories.history(u)) >= 2]
        if not self.users:
            raise ConfigError("fine-tuning needs users with at least two training interactions")
        self.rounds = step_rounds(steps)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[list[tuple[list[int], list[int]]]]:
        rr, rng, n = self.reranker, numpy_rng(gen), self.reranker.candidates
        for _ in range(self.rounds[epoch]):
            examples = []
            for u in rng.choice(self.users, size=self.batch_size):
                h = self.histories.history(int(u))
                t = int(rng.integers(1, len(h)))
                prefix, target = h[:t], int(h[t])
                top, _ = self.base.recommend(QueryBatch.from_histories([-1], [prefix]), k=n)
                cands = [*[int(i) for i in top[0] if i >= 0 and i != target][: n - 1], target]
                cands = [cands[j] for j in rng.permutation(len(cands))]
                prompt = rr.lm.prompt_ids(rr.messages(prefix, cands))
                examples.append((prompt, [rr.label_ids[cands.index(target)]]))
            yield examples

    def loss(
        self, module: nn.Module, examples: list[tuple[list[int], list[int]]], gen: torch.Generator
    ) -> torch.Tensor:
        return answer_loss(self.reranker.lm, examples, module)


def _single_token(lm: LocalLM, label: str) -> int:
    ids = lm.encode(label)
    if len(ids) != 1:
        raise ConfigError(f"the label {label!r} is {len(ids)} tokens for {lm.name}; the LLM re-ranker needs one")
    return ids[0]
