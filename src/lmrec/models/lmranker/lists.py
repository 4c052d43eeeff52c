"""``lm-list-ranker``: a causal LM (SmolLM2 by default) picks the next item from the base model's
lettered top candidates (LlamaRec), fine-tuned on the letters; its order mixed with the base's."""

from __future__ import annotations

import json
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lmrec.data.batch import EvalSet, QueryBatch, mask_seen
from lmrec.data.schema import Dataset
from lmrec.data.sequences import pad_right
from lmrec.errors import ConfigError
from lmrec.llm.lm import DEFAULT_LM, LocalLM, load_lm, with_lora
from lmrec.models.base import FitOptions, ModelConfig, Recommender
from lmrec.models.lmranker.common import (
    RANKERS,
    HistoryPrefixes,
    fuse_orders,
    lift_candidates,
    step_schedule,
    top_candidates,
)
from lmrec.train.trainer import numpy_rng

# == the list ranker: a causal LM picks the next item from lettered candidates (LlamaRec) ==========
LABELS = string.ascii_uppercase  # candidate labels: one token each
LIST_SYSTEM = (
    "You are a recommender system. From the items a user chose before, you pick the one they will choose next."
)
LIST_HISTORY = "The user watched or bought these items, in this order (the most recent is last):\n"
LIST_CANDIDATES = "\nCandidates:\n"
LIST_QUESTION = "\nWhich candidate will the user choose next? Answer with its letter only."
LIST_LOSSES = ("vocab", "labels")
MIX_GRID = tuple(i / 10 for i in range(11))  # the mixes tried on validation users
_BODY = "LMRECPROMPTBODY"  # stands for the user message while the chat template is rendered


@dataclass
class ListRankerConfig(ModelConfig):
    base: str = "sasrec"  # the retriever: a registered model that proposes the candidates
    base_config: dict[str, Any] = field(default_factory=dict)  # its options (a dict, or JSON on the CLI)
    base_path: str | None = None  # a saved model directory to use as the retriever instead of fitting one
    candidates: int = 20  # retriever top-N, labelled A, B, C, ... (at most 26)
    lm: str = DEFAULT_LM  # "smollm2" (the packaged SmolLM2-135M-Instruct) or a local HF causal-LM directory
    text_template: str | None = (
        None  # an item's line; None: "{title}{year_part}" (the catalog's default text without a title)
    )
    history_items: int = 10  # most recent items listed before the candidates
    title_tokens: int = 24  # tokens of one item's line
    steps: int = 200  # optimiser steps (0: zero-shot)
    batch_size: int = 8  # prompts per step
    lr: float = 2e-4
    weight_decay: float = 0.0
    lora_r: int = 8  # LoRA rank on every linear layer of the LM; 0: fine-tune every weight
    lora_alpha: int = 16
    shuffle: bool = True  # shuffle the candidates of each training prompt (else the retriever's order)
    loss: str = "vocab"  # cross-entropy of the label token over the vocabulary, or over the labels only
    mix: float = 1.0  # candidate order: 1 = ranker only, 0 = retriever only, between: blend of z-scores
    tune_mix: bool = True  # with validation users: mix is the best of MIX_GRID by their NDCG@10
    valid_users: int = 200  # validation users read to choose mix (0: all of them)
    infer_batch: int = 8  # prompts per forward pass when scoring

    def __post_init__(self) -> None:
        self.base_config = _parse_base_config(self.base_config)
        super().__post_init__()

    def validate(self) -> None:
        _validate_base(self.base, self.base_config)
        if not 1 <= self.candidates <= len(LABELS):
            raise ConfigError(
                f"candidates must be between 1 and {len(LABELS)} (one letter each), got {self.candidates}"
            )
        for key in ("history_items", "title_tokens", "batch_size", "infer_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.steps < 0 or self.lora_r < 0 or self.valid_users < 0:
            raise ConfigError("steps, lora_r and valid_users must be >= 0")
        if self.loss not in LIST_LOSSES:
            raise ConfigError(f"loss must be one of {LIST_LOSSES}, got {self.loss!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.lora_alpha > 0):
            raise ConfigError("need lr > 0, weight_decay >= 0 and lora_alpha > 0")
        if not 0.0 <= self.mix <= 1.0:
            raise ConfigError(f"mix must be between 0 and 1, got {self.mix}")


def _parse_base_config(value: Any) -> Any:
    """``--set base_config={"reg": 100}`` from the command line arrives as a string."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ConfigError(f"base_config must be a JSON object, got {value!r}: {err}") from None
    return value


def _validate_base(base: str, base_config: Any) -> None:
    from lmrec.models.registry import MODELS, model_class

    if base in RANKERS or base not in MODELS:
        choices = ", ".join(m for m in MODELS if m not in RANKERS)
        raise ConfigError(f"base must be a registered model other than a ranker ({choices}), got {base!r}")
    if not isinstance(base_config, dict):
        raise ConfigError(f"base_config must be a dict of {base!r} options, got {base_config!r}")
    model_class(base).config_class.from_dict(base_config)  # unknown or bad options fail here


def candidate_ndcg(
    order: torch.Tensor, items: torch.Tensor, valid: torch.Tensor, targets: list[np.ndarray], k: int = 10
) -> float:
    """Mean NDCG@k of rows whose top is their ``valid`` candidates ``items`` (B, c) sorted by
    ``order`` (B, c); ``targets`` holds each row's relevant items. With at least ``k`` candidates
    this is the full-ranking NDCG@k of :func:`lift_candidates`' scores on those rows."""
    if len(targets) == 0:
        return 0.0
    masked = torch.where(valid, order, torch.full_like(order, float("-inf")))
    ranked = torch.gather(items, 1, torch.argsort(masked, dim=1, descending=True, stable=True))
    n_valid = valid.sum(1).tolist()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for row, relevant in enumerate(targets):
        top = ranked[row, : min(k, int(n_valid[row]))].numpy()
        gains = np.isin(top, relevant).astype(np.float64)
        ideal = discounts[: min(len(relevant), k)].sum()
        total += float(gains @ discounts[: len(top)]) / ideal if ideal > 0 else 0.0
    return total / len(targets)


class ListRanker(Recommender):
    """A retriever's top candidates re-ranked by a fine-tuned causal LM that reads them as a
    lettered list after the user's recent items and scores them all in one forward pass.

    The prompt (the LM's chat template around one user message, then the assistant's turn):
    "The user watched or bought these items, in this order (the most recent is last):" and the
    ``history_items`` most recent item lines, then "Candidates:" and one line per candidate,
    "A. Toy Story (1995)", "B. ...", and "Which candidate will the user choose next? Answer with
    its letter only." The logits of the next token at the end of the prompt, read at the label
    tokens "A", "B", ..., are the candidates' scores (LlamaRec, Yue et al. 2023): one forward pass
    per user however many candidates, and no decoding.

    Training: for random training users, a cut t ≥ 1 of their time-ordered history; the prefix
    before t is the history, the item at t the answer. The candidates are the retriever's top
    ``candidates`` for the prefix outside the user's other training items (future items there are
    not wrong answers); if the answer is not among them it replaces the last one. The candidates
    are shuffled (``shuffle``; an LM favours positions, and without shuffling the answer would sit
    where it was inserted) and the loss is the cross-entropy of the answer's label token at the
    end of the prompt, nothing else (``loss="vocab"``: over the vocabulary, the LM loss on the
    label token; ``"labels"``: over the prompt's labels). LoRA adapters (rank ``lora_r``) on every
    linear layer; AdamW with linear warm-up (10 % of the steps) and decay, gradients clipped at 1.

    Scoring: the candidates in the retriever's order, the ranker's scores are the log-softmax of
    the label logits; ``mix`` blends them with the retriever's (z-scores per user, as lm-ranker
    does), and with validation users and ``tune_mix`` the mix is the one of :data:`MIX_GRID` with
    the best NDCG@10 on up to ``valid_users`` of them (``training_log["mix_ndcg"]``), so fusion
    never does worse on validation than the retriever (mix 0) or the ranker alone (mix 1).
    ``training_log["ranker_s_per_user"]`` is the ranker's time per validation user. The candidates
    go above every other item of the row; a history with no known item keeps the retriever's scores.

    A saved model holds the retriever's tensors and its name and options (``base.*``,
    ``base_meta``), the LoRA adapters (``lora.*``; every LM weight, ``lm.*``, when ``lora_r`` is 0),
    the prompt as token pieces and the chosen mix; the LM itself is reloaded from ``lm``.
    """

    name = "lm-list-ranker"
    config_class = ListRankerConfig
    config: ListRankerConfig
    report_users = 100  # an LM forward pass of a few hundred tokens per user
    devices = ("cpu", "cuda", "mps")

    lm: LocalLM
    base: Recommender

    # -- fit --------------------------------------------------------------------------------------
    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg = self.config
        lines = self._item_lines(train)  # first: a catalog without item text is refused before any training
        t0 = time.perf_counter()
        self.base = self._retriever(train, valid, options)
        base_s = time.perf_counter() - t0
        self.lm = load_lm(cfg.lm, options.cache_dir, options.device)
        if cfg.lora_r > 0:
            self.lm.model = with_lora(self.lm.model, cfg.lora_r, cfg.lora_alpha)
        self._set_prompt(lines)
        self.mix = cfg.mix
        t1 = time.perf_counter()
        log = self._finetune(train, options) if cfg.steps > 0 else {}
        train_s = time.perf_counter() - t1
        self.training_log = {
            **log,
            "steps": cfg.steps,
            "base_fit_s": base_s,
            "train_s": train_s,
            "trained_parameters": sum(p.numel() for p in self.lm.model.parameters() if p.requires_grad),
        }
        if valid is not None:
            self.training_log.update(self._choose_mix(valid, options))
        options.say(
            f"lm-list-ranker: base {cfg.base} {base_s:.1f} s, {cfg.steps} steps {train_s:.1f} s, mix {self.mix}"
        )

    def _retriever(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> Recommender:
        from lmrec.models.registry import load_model, model_class

        cfg = self.config
        if cfg.base_path is None:
            klass = model_class(cfg.base)
            return klass(klass.config_class.from_dict(cfg.base_config)).fit(train, valid, options)
        base = load_model(cfg.base_path)
        if base.n_items != train.n_items or base.n_users != train.n_users:
            raise ConfigError(
                f"base_path {cfg.base_path}: its model knows {base.n_users} users and {base.n_items} items, the "
                f"training data has {train.n_users} and {train.n_items}; train it on the same split"
            )
        return base

    def _item_lines(self, train: Dataset) -> list[str]:
        from lmrec.llm.prompts import scrub_pii
        from lmrec.text import choose_template, item_texts

        template = choose_template(train, self.config.text_template, default="{title}{year_part}")
        return [scrub_pii(t) for t in item_texts(train.catalog, template)]

    def _set_prompt(self, lines: list[str]) -> None:
        """The prompt's token pieces: the chat template around the body, the fixed sentences, the
        labels, and every item's line (cut to ``title_tokens``), kept as tensors for the checkpoint."""
        cfg = self.config
        tokenizer = self.lm.tokenizer
        messages = [{"role": "system", "content": LIST_SYSTEM}, {"role": "user", "content": _BODY}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        parts = str(rendered).split(_BODY)
        if len(parts) != 2:
            raise ConfigError(f"LM {cfg.lm!r}: its chat template does not put the user message in the prompt once")
        labels = [self.lm.encode(letter) for letter in LABELS[: cfg.candidates]]
        if any(len(ids) != 1 for ids in labels) or len({ids[0] for ids in labels}) != len(labels):
            raise ConfigError(f"LM {cfg.lm!r}: the labels {LABELS[: cfg.candidates]} are not distinct single tokens")
        pieces = {
            "head": self.lm.encode(parts[0] + LIST_HISTORY),
            "newline": self.lm.encode("\n"),
            "middle": self.lm.encode(LIST_CANDIDATES),
            "tail": self.lm.encode(LIST_QUESTION + parts[1]),
            "labels": [ids[0] for ids in labels],
        }
        ids = tokenizer(lines, add_special_tokens=False, truncation=True, max_length=cfg.title_tokens)["input_ids"]
        bullets = [self.lm.encode(f"{letter}. ") for letter in LABELS[: cfg.candidates]]
        self.prompt_tensors = {f"prompt_{k}": torch.tensor(v, dtype=torch.int64) for k, v in pieces.items()}
        self.prompt_tensors["prompt_bullets"] = _table(bullets)
        self.prompt_tensors["item_lines"] = _table(ids)
        self._unpack_prompt()

    def _unpack_prompt(self) -> None:
        t = self.prompt_tensors
        self._head, self._newline = t["prompt_head"].tolist(), t["prompt_newline"].tolist()
        self._middle, self._tail = t["prompt_middle"].tolist(), t["prompt_tail"].tolist()
        self.label_ids = t["prompt_labels"]
        self._bullets, self._lines = _rows(t["prompt_bullets"]), _rows(t["item_lines"])

    def prompt(self, history: np.ndarray, candidates: list[int]) -> list[int]:
        """Token ids of the prompt for a history (known items only, the most recent
        ``history_items``) and candidates (labelled in this order)."""
        h = history[(history >= 0) & (history < self.n_items)][-self.config.history_items :]
        ids = list(self._head)
        for item in h.tolist():
            ids += self._lines[item] + self._newline
        ids += self._middle
        for k, item in enumerate(candidates):
            ids += self._bullets[k] + self._lines[item] + self._newline
        return ids + self._tail

    def _finetune(self, train: Dataset, options: FitOptions) -> dict[str, Any]:
        cfg = self.config
        config = step_schedule(cfg.steps, cfg.lr, cfg.weight_decay, "lm-list-ranker")
        task = ListRankerTask(self, QueryBatch.from_interactions(train.interactions, np.arange(self.n_users)))
        return self._train(task, config, options, options.torch_generator(), total_steps=cfg.steps)

    def training_prompts(
        self,
        users: np.ndarray,
        prefixes: list[np.ndarray],
        positives: np.ndarray,
        seen: list[set[int]],
        rng: np.random.Generator,
    ) -> tuple[list[list[int]], list[int], list[int]]:
        """Prompts, the answer's position among each prompt's candidates, and how many candidates
        each has: the retriever's top for the prefix outside the user's other items, the answer put
        in place of the last one if missing, then shuffled (``shuffle``)."""
        cfg = self.config
        others = [np.fromiter(seen[int(u)] - {int(p)}, np.int64) for u, p in zip(users, positives, strict=True)]
        with torch.no_grad():
            scores = self.base.score(QueryBatch.from_histories(users, prefixes)).float()
        mask_seen(scores, QueryBatch.from_histories(users, others))
        values, items = torch.topk(scores, min(cfg.candidates, self.n_items), dim=1)
        prompts, answers, sizes = [], [], []
        for row, positive in enumerate(positives.tolist()):
            cands = items[row][torch.isfinite(values[row])].tolist()
            if positive not in cands:
                cands = [*cands[: cfg.candidates - 1], positive]
            if cfg.shuffle:
                cands = [cands[i] for i in rng.permutation(len(cands))]
            prompts.append(self.prompt(prefixes[row], cands))
            answers.append(cands.index(positive))
            sizes.append(len(cands))
        return prompts, answers, sizes

    def next_token_states(self, prompts: list[list[int]]) -> torch.Tensor:
        """The LM's last hidden state at the end of each prompt (B, d): what the next token, the
        label, is read from. Right-padded; the LM head is applied by the caller to what it needs."""
        ids, mask = pad_right([np.asarray(p, dtype=np.int64) for p in prompts], int(self.lm.tokenizer.pad_token_id))
        ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
        hidden = self.lm.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden[torch.arange(len(prompts), device=hidden.device), mask.sum(1) - 1]

    def label_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Logits of the label tokens (B, candidates) from next-token states (B, d)."""
        head = self.lm.model.get_output_embeddings()
        labels = self.label_ids.to(states.device)
        logits = states @ head.weight[labels].T
        return logits + head.bias[labels] if getattr(head, "bias", None) is not None else logits

    def _loss(self, prompts: list[list[int]], answers: list[int], sizes: list[int]) -> torch.Tensor:
        states = self.next_token_states(prompts)
        target = torch.tensor(answers, device=states.device)
        if self.config.loss == "vocab":
            logits = self.lm.model.get_output_embeddings()(states)
            return F.cross_entropy(logits.float(), self.label_ids.to(states.device)[target])
        logits = self.label_logits(states).float()
        unused = (
            torch.arange(logits.shape[1], device=logits.device)[None, :]
            >= torch.tensor(sizes, device=logits.device)[:, None]
        )
        return F.cross_entropy(logits.masked_fill(unused, float("-inf")), target)

    def _choose_mix(self, valid: EvalSet, options: FitOptions) -> dict[str, Any]:
        """Ranker scores for up to ``valid_users`` validation users, the NDCG@10 of every mix of
        :data:`MIX_GRID` on them, and (with ``tune_mix``) the best mix kept; ties go to the smaller
        mix (the retriever's order is the safer one)."""
        cfg = self.config
        chosen = valid.sample(cfg.valid_users, seed=options.seed) if cfg.valid_users else valid
        base, items, ok = self.candidates(chosen.queries)
        started = time.perf_counter()
        ranker, readable = self.ranker_scores(chosen.queries, items)
        n_read = int(readable.sum())
        per_user = (time.perf_counter() - started) / max(1, n_read)
        rows = np.flatnonzero(readable.numpy())
        targets = [chosen.targets(int(r)) for r in rows]
        base_c = base.gather(1, items)
        scores = {
            m: candidate_ndcg(fuse_orders(ranker, base_c, ok, m)[rows], items[rows], ok[rows], targets)
            for m in MIX_GRID
        }
        if cfg.tune_mix and n_read:
            self.mix = max(MIX_GRID, key=lambda m: (scores[m], -m))
        return {
            "mix": self.mix,
            "mix_ndcg": {str(m): v for m, v in scores.items()},
            "valid_users_read": n_read,
            "ranker_s_per_user": per_user,
        }

    # -- inference --------------------------------------------------------------------------------
    def candidates(self, batch: QueryBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Retriever scores (B, n_items), its top ``candidates`` outside each history (B, c) and
        which of those exist (B, c)."""
        return top_candidates(self.base, batch, self.config.candidates)

    def ranker_scores(self, batch: QueryBatch, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the candidates' labels (B, c), the candidates listed in the given
        order, ``infer_batch`` prompts per forward pass; and which queries had a known item (B,).
        Slots past a row's existing candidates (item -1 or beyond its count) score -inf."""
        histories = [batch.history(i) for i in range(len(batch))]
        readable = torch.tensor([bool(((h >= 0) & (h < self.n_items)).any()) for h in histories], dtype=torch.bool)
        out = torch.full(items.shape, float("-inf"))
        rows = np.flatnonzero(readable.numpy()).tolist()
        self.lm.model.eval()
        with torch.no_grad():
            for s in range(0, len(rows), self.config.infer_batch):
                chunk = rows[s : s + self.config.infer_batch]
                cands = [[int(i) for i in items[r].tolist() if 0 <= i < self.n_items] for r in chunk]
                logits = (
                    self.label_logits(
                        self.next_token_states(
                            [self.prompt(histories[r], c) for r, c in zip(chunk, cands, strict=True)]
                        )
                    )
                    .float()
                    .cpu()
                )
                for k, r in enumerate(chunk):
                    n = len(cands[k])
                    out[r, :n] = torch.log_softmax(logits[k, :n], dim=0)
        return out, readable

    def score(self, batch: QueryBatch) -> torch.Tensor:
        """Retriever scores, with its top candidates lifted above every other item in the ranker's
        order (or the ``mix`` of both orders)."""
        base, items, valid = self.candidates(batch)
        if items.shape[1] == 0 or self.mix == 0.0:
            return base
        ranker, readable = self.ranker_scores(batch, items)
        valid = valid & torch.isfinite(ranker)
        order = fuse_orders(
            torch.where(valid, ranker, torch.zeros_like(ranker)), base.gather(1, items), valid, self.mix
        )
        return lift_candidates(base, items, valid, order, readable)

    # -- checkpoint -------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        meta = json.dumps({"model": self.base.name, "config": self.base.config.to_dict()})
        out = {f"base.{k}": v for k, v in self.base.state().items()}
        out["base_meta"] = torch.tensor(list(meta.encode("utf-8")), dtype=torch.uint8)
        if self.config.lora_r > 0:
            from peft import get_peft_model_state_dict

            out.update({f"lora.{k}": v for k, v in get_peft_model_state_dict(self.lm.model).items()})
        else:
            out.update({f"lm.{k}": v for k, v in self.lm.model.state_dict().items()})
        out.update(self.prompt_tensors)
        out["mix"] = torch.tensor(self.mix, dtype=torch.float64)
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        from lmrec.models.registry import model_class

        cfg = self.config
        meta = json.loads(bytes(tensors["base_meta"].tolist()).decode("utf-8"))
        klass = model_class(meta["model"])
        self.base = klass(klass.config_class.from_dict(meta["config"]))
        self.base.n_users, self.base.n_items = self.n_users, self.n_items
        self.base.load_state({k[5:]: v for k, v in tensors.items() if k.startswith("base.")})
        self.lm = load_lm(cfg.lm, None, str(self.device))
        if cfg.lora_r > 0:
            from peft import set_peft_model_state_dict

            self.lm.model = with_lora(self.lm.model, cfg.lora_r, cfg.lora_alpha)
            set_peft_model_state_dict(self.lm.model, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
        else:
            self.lm.model.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("lm.")})
        self.lm.model.to(self.lm.device).eval()
        self.prompt_tensors = {k: v for k, v in tensors.items() if k.startswith(("prompt_", "item_lines"))}
        self._unpack_prompt()
        self.mix = float(tensors["mix"])


def _table(rows: list[list[int]]) -> torch.Tensor:
    """Ragged token lists as one (n, longest) table padded with -1."""
    width = max(1, max((len(r) for r in rows), default=1))
    table = torch.full((len(rows), width), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        table[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return table


def _rows(table: torch.Tensor) -> list[list[int]]:
    return [[int(t) for t in row if t >= 0] for row in table.tolist()]


class ListRankerTask:
    """The list ranker's fine-tuning for the Trainer: batches of random history prefixes, each a
    prompt whose shuffled candidates hold the next item; ten steps an "epoch"."""

    def __init__(self, model: ListRanker, histories: QueryBatch) -> None:
        self.model, self.module = model, model.lm.model
        self.prefixes = HistoryPrefixes(histories, model.config.steps, model.config.batch_size, "lm-list-ranker")

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[Any, ...]]:
        seen, rng = self.prefixes.seen, numpy_rng(gen)
        for users, prefixes, positives in self.prefixes.batches(epoch, rng):
            yield self.model.training_prompts(users, prefixes, positives, seen, rng)

    def loss(self, module: nn.Module, batch: tuple[Any, ...], gen: torch.Generator) -> torch.Tensor:
        return self.model._loss(*batch)  # the LM is called through the model's own helpers
