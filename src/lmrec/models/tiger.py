"""TIGER: generative retrieval over semantic item IDs (Rajput et al. 2023).

Each item is named by a short code from residual k-means of its text embedding
(:func:`lmrec.llm.semantic_ids.semantic_ids`): ``levels`` coarse-to-fine codewords plus one that
tells apart items sharing all of them. A causal transformer reads the codes of the user's recent
items and writes the codes of the next one, token by token; beam search constrained to the catalog
(:func:`lmrec.llm.trie.constrained_beam_search`) turns that into a ranked list of real items.

The codes can also come from collaborative vectors, a trained SASRec's item rows (``ids_from``:
items bought together share prefixes, as in P5's collaborative indexing and LC-Rec), or from both;
:func:`lmrec.llm.semantic_ids.code_usage` reports how many codewords each level uses and how many
items collide. Hybrid decoding (``hybrid_run``) adds a sequential model's distribution to the
beam search token by token (:class:`lmrec.llm.trie.PriorGuided`, after D3).

Because similar items share code prefixes, what is learned about one item carries over to its
neighbours, and an item with no training interactions can still be generated from its code. The
paper uses an encoder-decoder; a decoder-only model over one token stream does the same job with
one stack and lets a training window supervise every item in it in one pass.

Token stream: every item is written as ``BOS c_0 c_1 ... c_levels`` (BOS marks "an item starts
here"), so a window of items is trained like SASRec (each item after the first is a target, its
code tokens the supervised positions) and at inference the history is followed by a lone BOS that
asks for the next item. Tokens are one per (position in the code, code value), plus PAD and BOS.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.sequences import length_buckets, pad_right, sequence_windows
from lmrec.errors import ConfigError
from lmrec.llm.semantic_ids import code_sizes, code_usage, semantic_ids
from lmrec.llm.trie import PriorGuided, Stepper, Trie, constrained_beam_search, generated_ranking
from lmrec.models.base import FitOptions, ModelConfig, ReadsItemText, Recommender
from lmrec.models.sequential import SequentialRecommender, causal_mask, load_sequential, transformer_blocks
from lmrec.text.whiten import whiten
from lmrec.train.trainer import TrainConfig

PAD, BOS, FIRST_CODE = 0, 1, 2  # token ids; code tokens start at FIRST_CODE


@dataclass
class SemanticIDConfig(ModelConfig):
    """How items get their semantic IDs (:class:`SemanticItems`): TIGER's, and llm-gen's with
    ``item_ids=codes``."""

    levels: int = 3  # residual k-means levels (codewords per item before the tie-breaker)
    codebook: int = 32  # centroids per level
    text_encoder: str = "minilm"  # "minilm" (packaged all-MiniLM-L6-v2) or a local model directory
    text_template: str | None = None  # str.format over catalog columns; None: title, year, genres, text
    # the item blocks the item vectors hold, e.g. "text,genres,year,image" (lmrec.features); "text": the text alone
    item_features: str = "text"
    # what the semantic IDs quantise: "text" (the item vectors above), "collab" (the item rows of
    # the trained sequential model at collab_run) or "both" (each whitened, side by side)
    ids_from: str = "text"
    collab_run: str | None = None

    def validate(self) -> None:
        if self.levels < 1 or self.codebook < 1:
            raise ConfigError("levels and codebook must be >= 1")
        if self.ids_from not in ("text", "collab", "both"):
            raise ConfigError(f"ids_from must be text, collab or both, got {self.ids_from!r}")
        if self.ids_from != "text" and not self.collab_run:
            raise ConfigError(
                f"ids_from={self.ids_from} needs collab_run: a trained sequential run over the same items"
            )


@dataclass
class TigerConfig(SemanticIDConfig):
    dim: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256  # feed-forward size
    dropout: float = 0.1
    max_len: int = 20  # history items the model reads
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    valid_users: int = 300  # early stopping reads this many random validation users (beam search is slow)
    beams: int = 20  # beam width, also the length of the generated list
    # hybrid decoding: a sequential run whose next-item distribution guides the beam search
    # (lmrec.llm.trie.PriorGuided): an item scores log p_tiger + hybrid_weight · log p_run
    hybrid_run: str | None = None
    hybrid_weight: float = 0.0

    def validate(self) -> None:
        super().validate()
        for key in ("dim", "layers", "heads", "inner", "max_len", "epochs", "batch_size", "valid_users"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1")
        if self.beams < 1:
            raise ConfigError("beams must be >= 1")
        if self.dim % self.heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not (0 <= self.dropout < 1 and self.lr > 0 and self.weight_decay >= 0):
            raise ConfigError("need 0 <= dropout < 1, lr > 0 and weight_decay >= 0")
        if self.hybrid_weight < 0 or (self.hybrid_weight > 0) != bool(self.hybrid_run):
            raise ConfigError("hybrid decoding needs both hybrid_run and hybrid_weight > 0 (or neither)")


class SemanticItems(ReadsItemText):
    """A model whose items are named by semantic IDs (its config a :class:`SemanticIDConfig`)."""

    name: ClassVar[str]
    config: SemanticIDConfig

    def _semantic_ids(self, train: Dataset, options: FitOptions) -> tuple[np.ndarray, dict[str, object]]:
        """The codes (n_items, levels + 1) of :func:`~lmrec.llm.semantic_ids.semantic_ids` over
        the vectors ``ids_from`` names, and their :func:`~lmrec.llm.semantic_ids.code_usage`."""
        cfg = self.config
        codes = semantic_ids(self._code_vectors(train, options), cfg.levels, cfg.codebook, seed=options.seed)
        usage = code_usage(codes, cfg.codebook)
        options.say(
            f"{self.name}: codewords used per level {usage['used_per_level']} of {cfg.codebook};"
            f" {usage['items_in_collisions']} items share their first {cfg.levels} codes with another"
        )
        return codes, usage

    def _code_vectors(self, train: Dataset, options: FitOptions) -> np.ndarray:
        """What the semantic IDs quantise (``ids_from``): text vectors, collaborative rows, or both,
        each whitened to the collaborative width with unit variance per direction and set side by
        side, so that neither dominates the distances k-means reads."""
        cfg = self.config
        if cfg.ids_from == "text":
            return self._text_vectors(train, options)
        assert cfg.collab_run is not None  # validate() asks for it
        collab = load_sequential(cfg.collab_run, "collab_run", train.n_items).item_embeddings().numpy()
        if cfg.ids_from == "collab":
            return collab
        text, width = self._text_vectors(train, options), collab.shape[1]
        return np.concatenate([whiten(text, width, scale=1.0), whiten(collab, width, scale=1.0)], axis=1)


class CodeDecoder(nn.Module):
    """Token + position embeddings, causal transformer blocks, output tied to the token embeddings."""

    def __init__(self, vocab: int, n_positions: int, cfg: TigerConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, cfg.dim, padding_idx=PAD)
        self.positions = nn.Embedding(n_positions, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim)
        self.blocks = transformer_blocks(cfg.dim, cfg.heads, cfg.inner, cfg.dropout, cfg.layers)
        self.final_norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[PAD].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) token ids, right-padded → hidden states (B, L, dim); padding sits after the
        real tokens, so the causal mask alone keeps it out of every real position."""
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        x = self.dropout(self.norm(self.tokens(seq) + self.positions(pos)))
        return self.final_norm(self.blocks(x, causal_mask(length, seq.device)))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.tokens.weight.T


class _DecoderStepper:
    """Drives :func:`constrained_beam_search` for one query: all beams of the query go through the
    decoder in one batch. The input is short (``max_len × (levels + 2)`` tokens), so each step
    re-runs it instead of keeping a KV cache."""

    def __init__(self, net: CodeDecoder, prefix: torch.Tensor) -> None:
        self.net, self.prefix = net, prefix
        self.suffix = torch.zeros(1, 0, dtype=torch.long, device=prefix.device)

    def _next(self, seq: torch.Tensor) -> torch.Tensor:
        hidden = self.net(seq)[:, -1]
        return torch.log_softmax(self.net.logits(hidden).float(), dim=-1)

    def start(self) -> torch.Tensor:
        return self._next(self.prefix.unsqueeze(0))[0]

    def advance(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        device = self.prefix.device
        new = torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(1)
        self.suffix = torch.cat([self.suffix[torch.tensor(parents, device=device)], new], dim=1)
        return self._next(torch.cat([self.prefix.expand(len(tokens), -1), self.suffix], dim=1))


class Tiger(SemanticItems, Recommender):
    """Generative retrieval: a causal transformer writes the semantic ID of the next item."""

    name = "tiger"
    config_class = TigerConfig
    config: TigerConfig

    devices = ("cpu", "cuda", "mps")

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg = self.config
        codes, usage = self._semantic_ids(train, options)
        self.popularity = torch.from_numpy(train.item_popularity().astype(np.float32))
        self._set_codes(torch.from_numpy(codes))
        self.net = CodeDecoder(self.vocab, self.n_positions, cfg).to(self.device)
        options.say(f"tiger: {self.n_items} items as {cfg.levels + 1}-token codes over {self.vocab} tokens")
        histories = QueryBatch.from_interactions(train.interactions, np.arange(self.n_users))
        task = CodeTask(self, sequence_windows(histories, cfg.max_len + 1, min_length=2))
        if valid is not None:
            valid = valid.sample(cfg.valid_users, seed=options.seed)
        config = TrainConfig(
            epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, patience=cfg.patience, desc="tiger"
        )
        self.training_log = self._train(task, config, options, options.torch_generator(), valid=valid)
        self.training_log["codes"] = usage

    def _set_codes(self, codes: torch.Tensor) -> None:
        """Derive the token vocabulary, the per-item token rows and the catalog trie from the codes."""
        self.codes = codes.long().cpu()
        sizes = torch.from_numpy(code_sizes(self.codes.numpy()))
        offsets = FIRST_CODE + torch.cumsum(sizes, 0) - sizes  # token of (position p, value v): offsets[p] + v
        self.vocab = int(FIRST_CODE + sizes.sum())
        self.n_positions = (self.config.max_len + 1) * (self.config.levels + 2)
        tokens = self.codes + offsets
        bos = torch.full((len(tokens), 1), BOS, dtype=torch.long)
        table = torch.cat([torch.full((1, tokens.shape[1] + 1), PAD), torch.cat([bos, tokens], 1)])
        self.item_tokens = table.to(self.device)  # row 0: padding; row i + 1: BOS and item i's code
        self.trie = Trie(tokens.tolist())

    # -- inference --------------------------------------------------------------------------------
    def score(self, batch: QueryBatch) -> torch.Tensor:
        """Beam-searched log-probs of the generated items, in order; items not generated (history
        items included) rank after them, by popularity (finite). An empty history gets popularity."""
        cfg = self.config
        self.net.eval()
        guide = self._guide()
        priors = guide.score(batch).double() if guide is not None else None  # the whole batch at once

        def generate(row: int, history: np.ndarray) -> list[tuple[int, float]]:
            recent = torch.from_numpy(history[-cfg.max_len :] + 1).to(self.device)
            ask = torch.tensor([BOS], device=self.device)  # a lone BOS asks for the next item
            prefix = torch.cat([self.item_tokens[recent].reshape(-1), ask])
            stepper: Stepper = _DecoderStepper(self.net, prefix)
            if priors is not None:
                prior = priors[row].clone()
                prior[torch.from_numpy(history)] = float("-inf")
                stepper = PriorGuided(stepper, self.trie, torch.log_softmax(prior, 0), cfg.hybrid_weight)
            k = min(cfg.beams, self.n_items)
            return constrained_beam_search(
                stepper, self.trie, cfg.beams, k, banned=history.tolist(), max_steps=cfg.levels + 1
            )

        with torch.no_grad():
            return generated_ranking(batch, self.popularity, generate)

    def _guide(self) -> SequentialRecommender | None:
        """The sequential model of hybrid decoding, loaded once (None without one)."""
        if not self.config.hybrid_run:
            return None
        if getattr(self, "_guide_model", None) is None:
            self._guide_model = load_sequential(self.config.hybrid_run, "hybrid_run", self.n_items)
        return self._guide_model

    def state(self) -> dict[str, torch.Tensor]:
        return {
            **{f"net.{k}": v for k, v in self.net.state_dict().items()},
            "codes": self.codes,
            "popularity": self.popularity,
        }

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.popularity = tensors["popularity"]
        if not hasattr(self, "codes") or not torch.equal(self.codes, tensors["codes"].long()):
            self._set_codes(tensors["codes"])
        if not hasattr(self, "net"):
            self.net = CodeDecoder(self.vocab, self.n_positions, self.config).to(self.device)
        self.net.load_state_dict({k[4:]: v.clone() for k, v in tensors.items() if k.startswith("net.")})


class CodeTask:
    """TIGER's training, for the Trainer: windows of items written as code tokens; cross-entropy
    on every code token of every item after the first (the first is context only)."""

    def __init__(self, model: Tiger, windows: list[np.ndarray]) -> None:
        self.model, self.module, self.windows = model, model.net, windows

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        for batch in length_buckets(self.windows, self.model.config.batch_size, gen):
            yield pad_right(batch)[0]  # (B, W) shifted item ids, 0 = padding

    def loss(self, module: nn.Module, items: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seq = self.model.item_tokens[items].reshape(len(items), -1)
        inputs, targets = seq[:, :-1], seq[:, 1:]
        keep = targets >= FIRST_CODE
        keep[:, : self.model.config.levels + 1] = False  # the first item of a window is context only
        hidden = module(inputs)
        return nn.functional.cross_entropy(self.model.net.logits(hidden[keep]), targets[keep])
