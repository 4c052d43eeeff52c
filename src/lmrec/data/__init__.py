"""Data layer: schema, loaders, named sources, filters and splits."""

from lmrec.data.schema import Dataset, Vocab

__all__ = ["Dataset", "Vocab"]
