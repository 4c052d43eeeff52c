"""lmrec: recommender systems where pretrained language models do real work."""

import os

# oneDNN, which runs torch's bf16 matmuls on CPU, keeps a kernel per input shape in two caches of
# 1,024 entries each (ideep's LRU_CACHE_CAPACITY, oneDNN's primitive cache). A model whose shapes
# change every step (supervised positions × sampled candidates over a large catalog) filled them
# with ~2 GB over an epoch; 64 entries bound that and cost nothing measurable on ml-100k (2.09 s a
# SASRec epoch either way, one thread). Set either variable to choose otherwise.
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

from lmrec.data.schema import Dataset, Vocab
from lmrec.errors import DataError, LmrecError

__version__ = "0.1.0"

__all__ = ["DataError", "Dataset", "LmrecError", "Vocab", "__version__"]
