"""Synthetic labelled photo sets whose classes differ visibly.

Each class gets its own kind of scene (stripes, discs, checkerboard, rings, gradient,
triangles, ...) in its own palette, with random position, scale, noise and JPEG
quality, so a real vision model separates the classes while no two photos are equal.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from naturelens.taxonomy import Taxonomy, load_taxonomy

_PALETTES = [
    ((200, 40, 40), (250, 220, 200)),
    ((30, 120, 40), (200, 240, 180)),
    ((40, 60, 200), (210, 220, 255)),
    ((230, 180, 20), (60, 40, 10)),
    ((120, 40, 160), (240, 220, 250)),
    ((20, 160, 170), (20, 30, 40)),
    ((240, 120, 30), (30, 60, 90)),
    ((90, 90, 90), (245, 245, 245)),
    ((160, 110, 60), (220, 240, 250)),
    ((250, 90, 160), (30, 20, 40)),
    ((60, 180, 90), (90, 20, 20)),
    ((180, 180, 40), (20, 20, 120)),
]


def synthetic_photo(class_index: int, seed: int, size: int = 96) -> Image.Image:
    """One generated photo of class ``class_index`` (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed * 7919 + class_index)
    fg, bg = _PALETTES[class_index % len(_PALETTES)]
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in c)  # noqa: E731
    fg, bg = jitter(fg), jitter(bg)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    kind = class_index % 6
    step = int(rng.integers(size // 10, size // 5))
    offset = int(rng.integers(0, step))
    if kind == 0:  # vertical stripes
        for x in range(-offset, size, step):
            draw.rectangle([x, 0, x + step // 2, size], fill=fg)
    elif kind == 1:  # scattered discs
        for _ in range(int(rng.integers(4, 9))):
            cx, cy, r = rng.integers(0, size, 2).tolist() + [
                int(rng.integers(size // 12, size // 5))
            ]
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == 2:  # checkerboard
        for y in range(0, size, step):
            for x in range(0, size, step):
                if ((x + y) // step) % 2 == 0:
                    draw.rectangle([x, y, x + step, y + step], fill=fg)
    elif kind == 3:  # concentric rings
        cx, cy = rng.integers(size // 4, 3 * size // 4, 2).tolist()
        for r in range(size, 0, -step):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, step // 3))
    elif kind == 4:  # horizontal gradient with a horizon line
        arr = np.linspace(0, 1, size)[None, :, None]
        grad = (np.array(bg) * (1 - arr) + np.array(fg) * arr).repeat(size, axis=0)
        img = Image.fromarray(grad.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(size // 3, 2 * size // 3))
        draw.rectangle([0, y, size, y + step // 3], fill=bg)
    else:  # triangles
        for _ in range(int(rng.integers(3, 7))):
            x, y = rng.integers(0, size, 2).tolist()
            s = int(rng.integers(size // 8, size // 3))
            draw.polygon([(x, y - s), (x - s, y + s), (x + s, y + s)], fill=fg)
    # Classes beyond six shapes reuse a shape with another palette and a rotation.
    if class_index >= 6:
        img = img.rotate(45 * (class_index // 6), fillcolor=bg)
    noise = rng.normal(0, 8, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_photo_set(
    root: str | Path,
    taxonomy: str | Taxonomy = "flips",
    per_class: int = 10,
    size: int = 96,
    seed: int = 0,
    manifest: bool = False,
    with_metadata: bool = False,
) -> dict[str, str]:
    """Write a labelled photo set and return ``{path: class_id}``.

    Parameters
    ----------
    root
        Output folder. Photos go to ``root/<class display name>/<n>.jpg`` so that folder
        ingestion finds the labels; with ``manifest`` they go to ``root/photos/`` and a
        ``root/manifest.csv`` lists them with a ``label`` column instead.
    with_metadata
        Also give each manifest row a title, tags, an owner, a capture time and a point
        near a Spanish national park (for maps and photo-user-days).
    """
    tax = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
    root = Path(root)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    rows = []
    for ci, cls in enumerate(tax.classes):
        for n in range(per_class):
            folder = root / "photos" if manifest else root / cls.name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{cls.id}_{n:05d}.jpg"
            img = synthetic_photo(ci, seed * 100_003 + n, size=size)
            img.save(path, quality=int(rng.integers(70, 95)))
            out[str(path)] = cls.id
            angle = rng.uniform(0, 2 * math.pi)
            rows.append(
                {
                    "id": f"{cls.id}-{n}",
                    "path": str(path.relative_to(root)),
                    "label": cls.id,
                    "title": f"{cls.name} photo {n}",
                    "tags": ",".join(cls.prompts[:2]) if cls.prompts else cls.name,
                    "owner": f"user{int(rng.integers(0, max(2, per_class // 2)))}",
                    "taken_at": f"2023-0{1 + n % 9}-1{n % 10} 1{n % 10}:00:00",
                    "lat": round(40.4 + 0.3 * math.sin(angle) * rng.random(), 6),
                    "lon": round(-3.7 + 0.3 * math.cos(angle) * rng.random(), 6),
                }
            )
    if manifest:
        cols = ["id", "path", "label"] + (
            ["title", "tags", "owner", "taken_at", "lat", "lon"] if with_metadata else []
        )
        with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return out
