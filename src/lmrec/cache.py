"""Where lmrec keeps what it fetches or derives (datasets, text embeddings, converted language
models): ``$LMREC_CACHE``, else ``~/.cache/lmrec``. Every entry point defaults to this one place."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache() -> Path:
    return Path(os.environ.get("LMREC_CACHE", Path.home() / ".cache" / "lmrec"))
