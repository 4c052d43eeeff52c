"""Smaller, faster models and item tables.

* :mod:`~lmrec.compress.quantize` — row-wise int8 / int4 item tables, scored from the codes;
* :mod:`~lmrec.compress.pq` — product quantization (uint8 codes, ADC scoring, chunked top-k);
* :mod:`~lmrec.compress.onnx` — a sequential encoder exported to ONNX and run with ONNX Runtime,
  fp32 or dynamic int8 (``pip install 'lmrec[compress]'``);
* :mod:`~lmrec.compress.prune` — structured pruning of feed-forward units and attention heads;
* :mod:`~lmrec.compress.distill` — the distillation loss;
* :mod:`~lmrec.compress.vectors` — a dot-product model's item and query vectors.
"""

from __future__ import annotations

from lmrec.compress.distill import distillation_loss
from lmrec.compress.pq import PQTable, ProductQuantizer, kmeans, lloyd
from lmrec.compress.quantize import QuantizedTable, dequantize, quantize_rows
from lmrec.compress.vectors import item_embeddings, query_embeddings

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
