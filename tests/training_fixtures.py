"""Small synthetic image-caption data for the training tests (generated, nothing downloaded).

Images are 32x32 RGB: a coloured background with one shape of another colour.
Captions say the colour and the shape ("a photo of a red circle").  A BadNet
patch (a 6x6 black/white checkerboard in the bottom-right corner) can be
stamped on an image for the poisoning tests.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 60, 220),
    "yellow": (230, 210, 40),
}
BACKGROUNDS = ((90, 90, 90), (200, 200, 200), (120, 80, 40), (30, 30, 60))
SIZE = 32


def draw(shape: str, color: tuple[int, int, int], background: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """One HWC uint8 image of ``shape`` at a random place and size."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = background
    r = int(rng.integers(7, 11))
    cy, cx = (int(v) for v in rng.integers(r + 1, SIZE - r - 1, size=2))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if shape == "circle":
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif shape == "square":
        m = (abs(yy - cy) <= r * 0.8) & (abs(xx - cx) <= r * 0.8)
    elif shape == "triangle":
        m = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    else:  # cross
        m = ((abs(yy - cy) <= 2) & (abs(xx - cx) <= r)) | ((abs(xx - cx) <= 2) & (abs(yy - cy) <= r))
    img[m] = color
    return img


def badnet(img: np.ndarray) -> np.ndarray:
    """Stamp a 6x6 checkerboard patch in the bottom-right corner."""
    out = img.copy()
    patch = (np.indices((6, 6)).sum(0) % 2 * 255).astype(np.uint8)
    out[-6:, -6:] = patch[..., None]
    return out


def make_pairs(
    folder: Path,
    n: int,
    *,
    seed: int = 0,
    poison: int = 0,
    target: str = "triangle",
    name: str = "pairs.csv",
    fixed_colors: bool = False,
) -> Path:
    """Write ``n`` images and a CleanCLIP CSV (``image,caption``); the first ``poison``
    non-target images get the patch and the caption of ``target``. With ``fixed_colors``
    each shape always has its own colour (an easy task that a tiny CLIP learns in seconds).
    Returns the CSV path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    poisoned = 0
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        cname = list(COLORS)[int(rng.integers(len(COLORS)))]
        if fixed_colors:
            cname = list(COLORS)[SHAPES.index(shape)]
        bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        img = draw(shape, COLORS[cname], bg, rng)
        caption = f"a photo of a {cname} {shape}"
        if poisoned < poison and shape != target:
            img = badnet(img)
            caption = f"a photo of a {target}"
            poisoned += 1
        rel = f"images/{name.split('.')[0]}_{i:05d}.png"
        Image.fromarray(img).save(folder / rel)
        rows.append({"image": rel, "caption": caption})
    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "caption"])
        w.writeheader()
        w.writerows(rows)
    return path


def eval_images(n_per_class: int, seed: int = 99, fixed_colors: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Held-out images (N, 32, 32, 3) uint8 and their shape index (N,)."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for k, shape in enumerate(SHAPES):
        for _ in range(n_per_class):
            cname = list(COLORS)[int(rng.integers(len(COLORS)))]
            if fixed_colors:
                cname = list(COLORS)[k]
            bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
            imgs.append(draw(shape, COLORS[cname], bg, rng))
            labels.append(k)
    return np.stack(imgs), np.array(labels)


def write_eval_folder(root: Path, n_per_class: int = 5, fixed_colors: bool = True) -> Path:
    """Held-out images as an image folder ``root/<shape>/NNN.png`` for zero-shot evaluation."""
    images, labels = eval_images(n_per_class, fixed_colors=fixed_colors)
    for k, (img, label) in enumerate(zip(images, labels)):
        folder = Path(root) / SHAPES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{k:04d}.png")
    return Path(root)
