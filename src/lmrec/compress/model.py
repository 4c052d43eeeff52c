"""A compressed sequential model: an ONNX Runtime query encoder and a quantized item table, served
like any other model (``lmrec compress``, registered as ``compressed``).

SASRec's item table is both its input embedding and its output scorer, so a compressed model keeps
it once: the encoder graph (:class:`~lmrec.compress.onnx.RowsQueryEncoder`) holds no item table
and is handed the few rows each batch reads, dequantized on the spot, and the catalog is scored
straight from the codes (:func:`lmrec.compress.quantize.scores`, :meth:`PQTable.scores`). A table
whose float form fits ``table_cache_mb`` is instead expanded once in memory: the graph reads the
batch's ids from it directly and the catalog is scored by one matmul.

Methods, each a choice of encoder and table (``--set encoder=… table=…`` mixes them):

========  ====================  ========================================================
method    encoder (ONNX)        item table
========  ====================  ========================================================
int8      dynamic int8          row-wise int8
int4      fp32                  row-wise int4
pq        fp32                  product-quantized (``m`` sub-spaces × ``k`` centroids)
onnx      fp32                  float32
prune     fp32, pruned blocks   float32 (heads and feed-forward units pruned by importance,
                                then ``finetune_epochs`` of next-item training)
========  ====================  ========================================================

A saved compressed model is ``config.json`` + ``weights.safetensors`` (table, training
popularity) + ``encoder.onnx``; no pickle. It needs ``lmrec[compress]`` to load.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmrec.compress import quantize
from lmrec.compress.onnx import OnnxRunner, RowsQueryEncoder, export_onnx, onnx_values, quantize_int8
from lmrec.compress.pq import PQTable, ProductQuantizer
from lmrec.compress.prune import prune
from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.sequences import length_buckets, pad_right, sequence_windows
from lmrec.errors import ConfigError
from lmrec.models.base import DotProductModel, FitOptions, ModelConfig, Queries, Recommender
from lmrec.models.registry import model_class
from lmrec.models.sequential import SequenceEncoder, SequentialConfig, SequentialRecommender, histories_to_inputs
from lmrec.train.losses import softmax_ce
from lmrec.train.trainer import TrainConfig, Trainer, TrainerOptions, seeded
from lmrec.train.validation import validation_ndcg

METHODS: dict[str, tuple[str, str]] = {  # method → (encoder, table)
    "int8": ("int8", "int8"),
    "int4": ("fp32", "int4"),
    "pq": ("fp32", "pq"),
    "onnx": ("fp32", "float"),
    "prune": ("fp32", "float"),
}
ENCODERS = ("fp32", "int8")
TABLES = ("float", "int8", "int4", "pq")
ENCODER_FILE = "encoder.onnx"
CHUNK = 512  # queries encoded per ONNX Runtime call


@dataclass
class CompressedConfig(ModelConfig):
    method: str = "int8"  # int8 | int4 | pq | onnx | prune (see the module's table)
    encoder: str = "auto"  # "fp32" | "int8" ONNX encoder; auto: the method's
    table: str = "auto"  # "float" | "int8" | "int4" | "pq"; auto: the method's
    m: int = 16  # pq: sub-spaces (dim must be divisible by it)
    k: int = 256  # pq: centroids per sub-space (at most 256, and at most the number of items)
    pq_iters: int = 10  # pq: Lloyd iterations
    heads: int = 0  # prune: attention heads kept per block (0: half, at least one)
    inner: int = 0  # prune: feed-forward units kept per block (0: half)
    finetune_epochs: int = 5  # prune: next-item training after pruning (early-stopped on validation)
    finetune_lr: float = 1e-3
    threads: int = 0  # ONNX Runtime intra-op threads (0: its default)
    # a quantized or PQ table whose float rows fit in this many MB is expanded once when first used
    # and scored by one matmul (the file stays compressed); larger ones are scored from the codes
    table_cache_mb: float = 64.0
    seed: int = 0  # pq k-means and prune fine-tuning draws
    # the model compressed: `lmrec compress` records the source run's; `lmrec train --model
    # compressed` trains this one first (source_config: its options, a dict or JSON)
    source: str = "sasrec"
    source_config: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.encoder not in (*ENCODERS, "auto"):
            raise ConfigError(f"encoder must be one of {ENCODERS} or auto, got {self.encoder!r}")
        if self.table not in (*TABLES, "auto"):
            raise ConfigError(f"table must be one of {TABLES} or auto, got {self.table!r}")
        if not (1 <= self.k <= 256 and self.m >= 1 and self.pq_iters >= 0):
            raise ConfigError(
                f"pq needs m >= 1, 1 <= k <= 256 and pq_iters >= 0, got {self.m}, {self.k}, {self.pq_iters}"
            )
        if self.heads < 0 or self.inner < 0 or self.finetune_epochs < 0 or self.finetune_lr <= 0 or self.threads < 0:
            raise ConfigError("heads, inner, finetune_epochs and threads must be >= 0 and finetune_lr > 0")
        if self.table_cache_mb < 0:
            raise ConfigError(f"table_cache_mb must be >= 0, got {self.table_cache_mb}")
        if isinstance(self.source_config, str):  # `--set source_config={"dim": 32}` from the command line
            try:
                self.source_config = json.loads(self.source_config) if self.source_config.strip() else {}
            except ValueError as err:
                raise ConfigError(f"source_config must be a JSON object, got {self.source_config!r}: {err}") from None
        if not isinstance(self.source_config, dict):
            raise ConfigError(f"source_config must be a dict of {self.source!r} options, got {self.source_config!r}")

    @property
    def encoder_kind(self) -> str:
        return METHODS[self.method][0] if self.encoder == "auto" else self.encoder

    @property
    def table_kind(self) -> str:
        return METHODS[self.method][1] if self.table == "auto" else self.table


class CompressedSequential(DotProductModel):
    """A sequential model (SASRec, BERT4Rec, text-SASRec) as an ONNX encoder + a compressed table.

    Build one from a trained model with :func:`compress_model`; ``fit`` trains the ``source``
    model and compresses it. Empty histories are scored by training popularity, as the source does.
    """

    name = "compressed"
    config_class = CompressedConfig
    config: CompressedConfig

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.encoder_bytes = b""
        self.runner: OnnxRunner | None = None
        self.table: torch.Tensor | quantize.QuantizedTable | PQTable | None = None  # rows 0..n+1 (pad, items, mask)
        self.popularity = torch.zeros(0)

    # -- building ---------------------------------------------------------------------------------
    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        klass = model_class(self.config.source)
        source = klass(klass.config_class.from_dict(self.config.source_config)).fit(train, valid, options)
        built = compress_model(source, self.config, train, valid, options)
        self.config, self.training_log = built.config, source.training_log
        self.encoder_bytes, self.table, self.popularity = built.encoder_bytes, built.table, built.popularity
        self._start_encoder()

    @property
    def source_config(self) -> SequentialConfig:
        """The compressed model's own config (objective, history length, dimensions); parsed once
        per config (parsing reads type hints: most of a batch-1 request's time otherwise)."""
        cached = getattr(self, "_source_config", None)
        if cached is not None and cached[0] is self.config:
            return cached[1]
        klass = model_class(self.config.source)
        config = klass.config_class.from_dict(self.config.source_config)
        assert isinstance(config, SequentialConfig)
        self._source_config = (self.config, config)
        return config

    def _start_encoder(self) -> None:
        threads = self.config.threads or None
        self.runner = OnnxRunner(self.encoder_bytes, threads=threads)

    def set_threads(self, threads: int | None) -> None:
        """Restart the ONNX Runtime session with ``threads`` intra-op threads (None: its default)."""
        self.runner = OnnxRunner(self.encoder_bytes, threads=threads)

    # -- the table --------------------------------------------------------------------------------
    def _expanded(self) -> torch.Tensor | None:
        """The whole table as float rows, where it is a float table or its float form fits
        ``table_cache_mb`` (built once per table), its padding row zero; None: read rows and
        scores from the codes."""
        table, budget = self.table, self.config.table_cache_mb
        cached = getattr(self, "_expanded_rows", None)
        if cached is not None and cached[0] is table and cached[1] == budget:
            return cached[2]
        rows = None
        if isinstance(table, torch.Tensor):
            rows = table.float()
        elif table is not None:
            n_rows = table.n_rows if isinstance(table, quantize.QuantizedTable) else len(table.codes)
            if n_rows * self.table_dim * 4 <= budget * 2**20:
                rows = self._decode(torch.arange(n_rows))
        if rows is not None and bool(rows[0].any()):  # the encoder reads row 0 as the padding
            rows = rows.clone()
            rows[0] = 0
        self._expanded_rows = (table, budget, rows)
        return rows

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        """Float rows ``index`` of the (pad, items, mask) table."""
        expanded = self._expanded()
        return expanded[index] if expanded is not None else self._decode(index)

    def _decode(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` of a quantized or PQ table, only those dequantized or decoded."""
        table = self.table
        if isinstance(table, quantize.QuantizedTable):
            return quantize.gather(table, index)
        assert isinstance(table, PQTable)
        return table.pq.decode(table.codes[index])

    def _scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, n_items) dot products with the item rows (the expanded ones, else from the codes)."""
        table, n, expanded = self.table, self.n_items, self._expanded()
        if expanded is not None:
            return vectors @ expanded[1 : n + 1].T
        if isinstance(table, quantize.QuantizedTable):
            return quantize.scores(vectors, quantize.row_slice(table, 1, n + 1))
        assert isinstance(table, PQTable)
        return PQTable(table.pq, table.codes[1 : n + 1]).scores(vectors)

    # -- the vectors protocol -----------------------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        """The item rows as the scores read them (dequantized, decoded)."""
        return self._rows(torch.arange(1, self.n_items + 1))

    def query_embeddings(self, batch: QueryBatch) -> Queries:
        """The ONNX encoder's last hidden state after each history; empty histories are not exact."""
        if self.runner is None:
            raise ConfigError("this compressed model has no encoder yet: load or build it first")
        cfg = self.source_config
        seq, lengths = histories_to_inputs(batch, self.n_items, cfg.max_len, append_mask=cfg.objective == "masked")
        out = torch.empty(len(batch), self.table_dim)
        expanded = self._expanded()
        for s in range(0, len(batch), CHUNK):
            part, n = seq[s : s + CHUNK], lengths[s : s + CHUNK]
            part = part[:, : max(1, int(n.max()))]
            if expanded is not None:  # the whole float table is at hand: the graph reads the ids from it
                out[s : s + len(part)] = torch.from_numpy(self.runner(part, n, expanded))
                continue
            ids, inverse = torch.unique(part, return_inverse=True)  # else only the rows the batch reads
            if int(ids[0]) != 0:  # row 0 of the rows handed over is the padding
                ids, inverse = torch.cat([torch.zeros(1, dtype=ids.dtype), ids]), inverse + 1
            rows = self._decode(ids)
            rows[0] = 0
            out[s : s + len(part)] = torch.from_numpy(self.runner(inverse, n, rows))
        return Queries(out, torch.zeros(len(batch)), lengths > 0)

    def fallback_scores(self, batch: QueryBatch) -> torch.Tensor:
        return torch.log1p(self.popularity).unsqueeze(0).expand(len(batch), -1)

    def score(self, batch: QueryBatch) -> torch.Tensor:
        with torch.no_grad():
            q = self.query_embeddings(batch)
            out = self._scores(q.vectors)
            if not bool(q.exact.all()):
                out[~q.exact] = torch.log1p(self.popularity)
        return out

    @property
    def table_dim(self) -> int:
        table = self.table
        if isinstance(table, quantize.QuantizedTable):
            return table.dim
        if isinstance(table, PQTable):
            return table.pq.dim
        assert table is not None
        return int(table.shape[1])

    # -- sizes ------------------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """Numbers stored: the encoder's weights (int8 ones with their scales) and the table's
        entries (codes count one per coordinate, however packed; scales, offsets, codebooks)."""
        table = self.table
        if isinstance(table, quantize.QuantizedTable):
            values = table.n_rows * table.dim + table.scale.numel() + table.offset.numel()
        elif isinstance(table, PQTable):
            values = table.codes.numel() + table.pq.centroids.numel()
        else:
            assert table is not None
            values = table.numel()
        return onnx_values(self.encoder_bytes) + values

    # -- saving -----------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        table = self.table
        if isinstance(table, quantize.QuantizedTable | PQTable):
            parts = table.state()
        else:
            assert table is not None
            parts = {"rows": table}
        return {"popularity": self.popularity, **{f"table.{k}": v for k, v in parts.items()}}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.popularity = tensors["popularity"]
        parts = {k.removeprefix("table."): v for k, v in tensors.items() if k.startswith("table.")}
        kind = self.config.table_kind
        if kind in ("int8", "int4"):
            self.table = quantize.QuantizedTable.from_state(parts)
        elif kind == "pq":
            self.table = PQTable.from_state(parts)
        else:
            self.table = parts["rows"]

    def save(self, directory: str | Path) -> Path:
        path = super().save(directory)
        (path / ENCODER_FILE).write_bytes(self.encoder_bytes)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> CompressedSequential:
        model = super().load(directory)
        model.encoder_bytes = (Path(directory) / ENCODER_FILE).read_bytes()
        model._start_encoder()
        return model


# -- compressing a trained model ------------------------------------------------------------------------
def compress_model(
    source: Recommender,
    config: CompressedConfig,
    train: Dataset | None = None,
    valid: EvalSet | None = None,
    options: FitOptions | None = None,
) -> CompressedSequential:
    """``source`` (a trained sequential model) compressed as ``config`` says; ``source`` is left
    untouched. ``prune`` fine-tunes on ``train`` (early stopping on ``valid``)."""
    if not isinstance(source, SequentialRecommender):
        raise ConfigError(
            f"lmrec compress works on sequential models (sasrec, bert4rec, text-sasrec), not {source.name}"
        )
    if source.fused:
        raise ConfigError(
            f"lmrec compress: {source.name} adds text fusion to its scores (fusion.weight "
            f"{source.config.fusion.weight}), which the compressed encoder does not carry; compress a model "
            "trained without it"
        )
    options = options or FitOptions()
    scfg = source.config
    # as saved (JSON: a part's tuples become lists), so a loaded config compares equal
    config = config.updated({"source": source.name, "source_config": json.loads(json.dumps(scfg.to_dict()))})
    causal = scfg.objective == "causal"
    net: SequenceEncoder = source.net
    training_log: dict[str, Any] = {}
    if config.method == "prune":
        if train is None:
            raise ConfigError("method=prune fine-tunes the pruned model: it needs the training data")
        net, training_log = _prune_and_finetune(source, config, train, valid, options)
    net.eval()
    with torch.no_grad():
        rows = net.item_table().detach().float().cpu().clone()  # (n + 2, dim): pad, items, mask
    out = CompressedSequential(config)
    out.n_users, out.n_items = source.n_users, source.n_items
    out.popularity = source.popularity.detach().float().cpu().clone()
    out.table = _compress_table(rows, config, source.n_items)
    out.training_log = training_log
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(RowsQueryEncoder(net, causal=causal), Path(tmp) / "encoder.onnx")
        if config.encoder_kind == "int8":
            path = quantize_int8(path, Path(tmp) / "encoder.int8.onnx")
        out.encoder_bytes = path.read_bytes()
    out._start_encoder()
    return out


def _compress_table(
    rows: torch.Tensor, config: CompressedConfig, n_items: int
) -> torch.Tensor | quantize.QuantizedTable | PQTable:
    kind = config.table_kind
    if kind in ("int8", "int4"):
        return quantize.quantize_rows(rows, 8 if kind == "int8" else 4)
    if kind == "pq":
        k = min(config.k, n_items)
        gen = torch.Generator().manual_seed(config.seed)
        pq = ProductQuantizer.fit(rows[1 : n_items + 1], m=config.m, k=k, iters=config.pq_iters, generator=gen)
        return pq.quantize(rows)
    return rows


# -- pruning with a short fine-tune -----------------------------------------------------------------------
class _NextItemTask:
    """Next-item full-softmax cross-entropy over the training windows (SASRec's objective)."""

    def __init__(self, net: SequenceEncoder, train: Dataset, max_len: int, batch_size: int) -> None:
        self.net, self.batch_size = net, batch_size
        histories = QueryBatch.from_interactions(train.interactions, np.arange(train.n_users))
        self.windows = sequence_windows(histories, max_len + 1, min_length=2)
        if not self.windows:
            raise ConfigError("prune: no training sequence has a target")
        self.unseen = torch.from_numpy(train.item_popularity() == 0)

    @property
    def module(self) -> nn.Module:
        return self.net

    def batches(self, epoch: int, generator: torch.Generator) -> list[torch.Tensor]:
        return [pad_right(batch)[0] for batch in length_buckets(self.windows, self.batch_size, generator)]

    def loss(self, module: nn.Module, seq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        table = self.net.item_table()
        inputs, targets = seq[:, :-1], seq[:, 1:]
        hidden = module(inputs, causal=True, table=table)
        keep = targets > 0
        logits = self.net.logits(hidden[keep], table).masked_fill(self.unseen, float("-inf"))
        return softmax_ce(logits, targets[keep] - 1)


@dataclass
class _EncoderScorer:
    """Scores of a torch encoder, for validation while fine-tuning."""

    net: SequenceEncoder
    n_items: int
    max_len: int
    popularity: torch.Tensor

    def score(self, batch: QueryBatch) -> torch.Tensor:
        seq, lengths = histories_to_inputs(batch, self.n_items, self.max_len, append_mask=False)
        with torch.no_grad():
            table = self.net.item_table()
            out = self.net.logits(self.net.encode(seq, lengths, causal=True, table=table), table)
        out[lengths == 0] = torch.log1p(self.popularity)
        return out


def _prune_and_finetune(
    source: SequentialRecommender, config: CompressedConfig, train: Dataset, valid: EvalSet | None, options: FitOptions
) -> tuple[SequenceEncoder, dict[str, Any]]:
    scfg = source.config
    if scfg.objective != "causal":
        raise ConfigError("method=prune fine-tunes with the next-item objective: causal models (sasrec) only")
    heads = config.heads or max(1, scfg.heads // 2)
    inner = config.inner or max(1, scfg.inner // 2)
    net = prune(source.net, scfg, inner=inner, heads=heads)
    options.say(f"pruned to {heads} of {scfg.heads} heads, {inner} of {scfg.inner} feed-forward units per block")
    if config.finetune_epochs == 0:
        return net, {"pruned": {"heads": heads, "inner": inner}}
    task = _NextItemTask(net, train, scfg.max_len, scfg.batch_size)
    scorer = _EncoderScorer(net, source.n_items, scfg.max_len, source.popularity.float())
    validate = (lambda: validation_ndcg(scorer, valid)) if valid is not None and len(valid) else None
    trainer = Trainer(
        TrainConfig(  # the source's own regularisation: without its weight decay the pruned model overfits
            epochs=config.finetune_epochs,
            lr=config.finetune_lr,
            weight_decay=scfg.weight_decay_value,
            optimizer=scfg.optimizer,
            patience=scfg.patience,
            desc="fine-tune",
        ),
        TrainerOptions(progress=options.progress),
    )
    with seeded(config.seed):  # dropout draws
        log = trainer.fit(task, torch.Generator().manual_seed(config.seed), validate)
    return net.eval(), {"pruned": {"heads": heads, "inner": inner}, "finetune": log}


def directory_bytes(directory: str | Path) -> int:
    """Bytes of the files under ``directory`` (a saved model's size on disk)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def source_parameter_count(model: Recommender) -> int:
    """Numbers a saved model stores for scoring (its tensors, popularity counts left out)."""
    return sum(int(t.numel()) for k, t in model.state().items() if k != "popularity")
