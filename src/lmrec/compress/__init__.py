"""Smaller, faster models and item tables.

* :mod:`~lmrec.compress.quantize` — row-wise int8 / int4 item tables, scored from the codes;
* :mod:`~lmrec.compress.pq` — product quantization (uint8 codes, ADC scoring, chunked top-k);
* :mod:`~lmrec.compress.onnx` — a sequential encoder exported to ONNX and run with ONNX Runtime,
  fp32 or dynamic int8 (``pip install 'lmrec[compress]'``);
* :mod:`~lmrec.compress.prune` — structured pruning of feed-forward units and attention heads;
* the distillation loss (:func:`lmrec.train.losses.distillation_loss`, re-exported here; sequential
  students use it through ``--set teacher=RUN``);
* :mod:`~lmrec.compress.vectors` — a dot-product model's item and query vectors.
"""

from __future__ import annotations

from lmrec.compress.pq import PQTable, ProductQuantizer, kmeans, lloyd
from lmrec.compress.quantize import QuantizedTable, dequantize, quantize_rows
from lmrec.compress.vectors import item_embeddings, query_embeddings
from lmrec.train.losses import distillation_loss

__all__ = [
    "PQTable",
    "ProductQuantizer",
    "QuantizedTable",
    "dequantize",
    "distillation_loss",
    "item_embeddings",
    "kmeans",
    "lloyd",
    "quantize_rows",
    "query_embeddings",
]
