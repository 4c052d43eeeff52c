"""Item and user feature tables from a dataset's catalog and user table.

:func:`item_features` is the one place that turns a catalog into model inputs beyond IDs: item text
through the sentence encoder (with its embedding cache), images through the image encoder (cached
the same way), and attribute columns. :func:`user_features` does the same for a user table
(ml-100k's age, gender and occupation); it is cheap to build, so it is not cached.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lmrec.errors import ConfigError
from lmrec.features.tables import Block, Encode, FeatureSchema, FeatureTable, build_table, parse_spec

if TYPE_CHECKING:
    from lmrec.data.schema import Dataset
    from lmrec.features.images import ImageEncoder
    from lmrec.text import TextEncoder

ML100K_USER_FEATURES = "age,gender,occupation"
DEFAULT_IMAGE_SIZE = 224  # EfficientNet-Lite0's input size


def needs(spec: str | FeatureSchema, kind: str) -> bool:
    """Whether a feature list (or fitted schema) has a block of ``kind`` ("text" or "image")."""
    kinds = [b.kind for b in spec.blocks] if isinstance(spec, FeatureSchema) else [s.kind for s in parse_spec(spec)]
    return kind in kinds


def image_loader(
    spec: str | FeatureSchema, device: str = "cpu", cache_dir: Path | None = None
) -> Callable[[], ImageEncoder]:
    """A function that loads the image encoder a feature list or fitted schema names (its local
    weights, else the packaged EfficientNet-Lite0, at the input size it was fitted with), called
    only when a row has an image. ``cache_dir`` is lmrec's cache, where the packaged weights are
    converted to safetensors once (None: read in place each time)."""
    if isinstance(spec, FeatureSchema):
        block = next((b for b in spec.blocks if b.kind == "image"), None)
        model = block.model if block is not None else None
        fitted = re.search(r"@(\d+)", block.encoder or "") if block is not None else None
        size = int(fitted.group(1)) if fitted else DEFAULT_IMAGE_SIZE
    else:
        model, size = next((s.model for s in parse_spec(spec) if s.kind == "image"), None), DEFAULT_IMAGE_SIZE

    def load() -> ImageEncoder:
        from lmrec.features.images import load_image_encoder

        return load_image_encoder(model, device, cache_dir, image_size=size)

    return load


def item_features(
    catalog: pd.DataFrame,
    spec: str | FeatureSchema,
    *,
    text_encoder: TextEncoder | None = None,
    text_template: str | None = None,
    image_encoder: ImageEncoder | Callable[[], ImageEncoder] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> FeatureTable:
    """The feature table of ``catalog``'s rows: fitted on them for a feature list (``"text,genres,
    year,image"``), or built as a fitted :class:`FeatureSchema` says (items added later). Text and
    image vectors are cached under ``cache_dir`` (the embeddings folder) when given.
    ``image_encoder`` may be a function that loads one: it is called only when a row has an image."""
    encoders: dict[str, Encode] = {}
    if needs(spec, "text"):
        if text_encoder is None:
            raise ConfigError("item feature 'text' needs a text encoder")
        encoders["text"] = _text(text_encoder, text_template, cache_dir, progress)
    if needs(spec, "image"):
        fitted = next((b for b in spec.blocks if b.kind == "image"), None) if isinstance(spec, FeatureSchema) else None
        encoders["image"] = _image(image_encoder, fitted, cache_dir, progress)
    return build_table(catalog, spec, encoders, where="catalog")


def _text(encoder: TextEncoder, template: str | None, cache_dir: str | Path | None, progress: bool) -> Encode:
    from lmrec.text import encode_cached, item_texts

    def encode(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
        texts = item_texts(frame, template)
        vectors = encode_cached(encoder, texts, cache_dir, progress)
        return vectors, np.array([bool(t.strip()) for t in texts], bool), encoder.name

    return encode


def _image(
    encoder: ImageEncoder | Callable[[], ImageEncoder] | None,
    fitted: Block | None,
    cache_dir: str | Path | None,
    progress: bool,
) -> Encode:
    from lmrec.features.images import encode_images, image_paths

    def encode(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
        _, has = image_paths(frame)
        if fitted is not None and not has.any():  # new rows without images need no encoder
            return np.zeros((len(frame), fitted.width), np.float32), has, str(fitted.encoder)
        if encoder is None:
            raise ConfigError("item feature 'image' needs an image encoder (pip install 'lmrec[image]')")
        if not has.any():
            raise ConfigError("item feature 'image' needs a catalog column 'image' of image file paths")
        loaded = typing.cast("ImageEncoder", encoder if hasattr(encoder, "encode") else encoder())
        return (*encode_images(loaded, frame, cache_dir, progress), loaded.name)

    return encode


def user_features(dataset: Dataset, spec: str | FeatureSchema = ML100K_USER_FEATURES) -> FeatureTable:
    """One row per user row of ``dataset`` (its user vocabulary's order) from its user table: by
    default ml-100k's age (standardised), gender and occupation (one-hot), each with a presence
    column. Users the table does not list get all-missing rows."""
    if dataset.user_features is None or "user" not in dataset.user_features.columns:
        raise ConfigError(f"{dataset.name} has no user table (a frame with a 'user' column)")
    table = dataset.user_features.drop_duplicates("user").set_index(dataset.user_features["user"].astype(str))
    frame = table.reindex(dataset.users.ids).reset_index(drop=True)
    if needs(spec, "text") or needs(spec, "image"):
        raise ConfigError("user features are attribute columns; 'text' and 'image' are item features")
    return build_table(frame, spec, where="user table")
