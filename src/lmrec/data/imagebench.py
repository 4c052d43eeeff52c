"""A generated benchmark where item images carry what the text does not: procedural pictures whose
content encodes a hidden item attribute that drives a synthetic user log.

No public recommendation dataset with item images ships on PyPI, so this one is drawn:

* every item has a hidden **style** (``styles`` of them): a foreground colour family and a motif
  (stripes, a disc, a square or rings), drawn with numpy at ``size`` px over a random background,
  with random position, scale, stripe frequency, angle and pixel noise; and a **tone** in [0, 1]
  (the motif's scale), the axis along which users drift within a style;
* the visible attributes are a **department** (random, unrelated to the style), a **price**
  (log-normal, a tenth missing) and a **year**; the **title** and **description** are random
  product words — nothing in the text or the attributes reveals the style;
* every user prefers one style (and, weakly, one department); a history walks through the
  preferred style, each next item near the previous one's tone, with a share of off-style items,
  and now and then drifts to a neighbouring style.

So an ID model learns the styles from co-occurrence for warm items, text and attributes cannot
place a cold item in its style, and an image encoder can. Images are written as PNG files (no
imaging library needed to write them); the catalog's ``image`` column holds their paths.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.data.schema import Dataset

# Foreground colour families (RGB); a style is (colour, motif) with colour = style % len(COLOURS).
COLOURS = ((220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 200, 30), (170, 50, 200), (20, 190, 200))
MOTIFS = ("stripes", "disc", "square", "rings")
DEPARTMENTS = ("kitchen", "garden", "office", "bath", "outdoor", "nursery")
_WORDS = (  # noqa: SIM905
    "classic modern compact deluxe everyday premium simple sturdy light handy smart soft bold "
    "urban rustic nordic vintage essential studio travel home daily prime active calm bright"
).split()
_NOUNS = (  # noqa: SIM905
    "mug lamp basket cushion tray bottle planter clock frame throw bowl jar rug shelf caddy "
    "organiser towel blanket vase holder"
).split()


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array as PNG file bytes (8-bit RGB, no filter)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def draw_item(style: int, tone: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """One item picture: the style's colour and motif, scaled by ``tone``, with random nuisances."""
    colour = np.array(COLOURS[style % len(COLOURS)], np.float32)
    motif = MOTIFS[(style // len(COLOURS)) % len(MOTIFS)]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    background = rng.uniform(60, 200) + rng.normal(0, 8, 3)
    img = np.broadcast_to(background, (size, size, 3)).astype(np.float32).copy()
    cy, cx = rng.uniform(0.35, 0.65, 2)
    radius = 0.15 + 0.25 * tone
    if motif == "stripes":
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(4, 9)
        phase = np.cos(angle) * x + np.sin(angle) * y
        mask = (
            (np.sin(2 * np.pi * freq * phase) > 0) & (np.abs(y - cy) < radius + 0.1) & (np.abs(x - cx) < radius + 0.1)
        )
    elif motif == "disc":
        mask = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
    elif motif == "square":
        mask = (np.abs(y - cy) < radius * 0.9) & (np.abs(x - cx) < radius * 0.9)
    else:
        r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        mask = (np.sin(2 * np.pi * rng.uniform(5, 8) * r) > 0) & (r < radius + 0.1)
    shade = rng.uniform(0.8, 1.15)
    img[mask] = np.clip(colour * shade, 0, 255)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def image_benchmark(
    directory: str | Path,
    *,
    n_items: int = 800,
    n_users: int = 1500,
    styles: int = 8,
    mean_length: int = 25,
    size: int = 64,
    off_style: float = 0.15,
    drift: float = 0.05,
    missing_images: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Draw the catalog (PNG files under ``directory/images``) and the user log; returns the
    dataset, whose catalog has ``title``, ``description``, ``categories`` (the department),
    ``department``, ``price``, ``year``, ``image`` (a path, empty for a ``missing_images`` share)
    and the hidden ``style`` and ``tone`` (for checks only: models must not read them)."""
    if not 1 <= styles <= len(COLOURS) * len(MOTIFS):
        raise ValueError(f"styles must be in 1..{len(COLOURS) * len(MOTIFS)}")
    rng = np.random.default_rng(seed)
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    style = rng.integers(0, styles, n_items)
    tone = rng.uniform(0, 1, n_items)
    department = rng.integers(0, len(DEPARTMENTS), n_items)
    popularity = rng.pareto(1.5, n_items) + 1.0
    rows = []
    for i in range(n_items):
        path = root / "images" / f"item{i:05d}.png"
        path.write_bytes(png_bytes(draw_item(int(style[i]), float(tone[i]), size, rng)))
        words = rng.choice(_WORDS, 2, replace=False)
        noun = rng.choice(_NOUNS)
        price = float(np.round(rng.lognormal(3.0, 0.6), 2)) if rng.random() > 0.1 else None
        rows.append(
            {
                "item": f"i{i}",
                "title": f"{words[0].title()} {words[1]} {noun} {i}",
                "description": f"A {rng.choice(_WORDS)} {noun} for every {rng.choice(_WORDS)} day.",
                "categories": [DEPARTMENTS[department[i]]],
                "department": DEPARTMENTS[department[i]],
                "price": price,
                "year": int(rng.integers(2015, 2025)),
                "image": "" if rng.random() < missing_images else str(path),
                "style": int(style[i]),
                "tone": float(tone[i]),
            }
        )
    catalog = pd.DataFrame(rows)
    by_style = [np.flatnonzero(style == s) for s in range(styles)]
    events = []
    t = 0
    for u in range(n_users):
        current = int(rng.integers(0, styles))
        liked_dept = int(rng.integers(0, len(DEPARTMENTS)))
        length = max(5, int(rng.poisson(mean_length)))
        seen = np.zeros(n_items, bool)
        last_tone = float(rng.uniform(0, 1))
        for _ in range(length):
            if rng.random() < drift:
                current = (current + int(rng.choice([-1, 1]))) % styles
            pool = by_style[current] if rng.random() >= off_style else np.arange(n_items)
            weights = popularity[pool] * np.exp(-np.abs(tone[pool] - last_tone) / 0.15)
            weights = weights * np.where(department[pool] == liked_dept, 2.0, 1.0)
            weights[seen[pool]] = 0.0
            if weights.sum() <= 0:
                continue
            item = int(rng.choice(pool, p=weights / weights.sum()))
            seen[item] = True
            if style[item] == current:
                last_tone = float(tone[item])
            events.append((f"u{u}", f"i{item}", t))
            t += 1
    frame = pd.DataFrame(events, columns=["user", "item", "timestamp"])
    return Dataset.from_frame(frame, catalog, name="image-bench")
