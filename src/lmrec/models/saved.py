"""What a saved model directory holds: ``config.json`` (name, config, sizes) and the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a saved model: its registered name, config and sizes."""
    meta: dict[str, Any] = json.loads((Path(directory) / CONFIG_FILE).read_text())
    return meta
