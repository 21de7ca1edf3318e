"""``synth``: write a whole synthetic world to disk.

Layout of ``out`` (all images PNG, HWC uint8 RGB):

- ``train/``: ``images/*.png``, ``train.csv`` (CleanCLIP layout ``image,caption``,
  paths relative to the CSV) and ``train_meta.jsonl`` (one line per image:
  ``image``, ``caption``, ``background``, ``objects`` = list of ``category``,
  ``colour``, ``rgb``, ``box`` XYXY pixels, ``mask_rle``; see :func:`rle_encode`).
- ``pool/``: held-apart clean scenes for fine-tuning, same format (``pool.csv``).
- ``detect/``: clean scenes from which a detection set is built, same format.
- ``reference/``: ImageFolder of object crops ``reference/<category>/*.png`` and
  background crops ``reference/background/*.png``: the only data the region
  classifier is trained on.
- ``eval/``: zero-shot ImageFolder ``eval/<category>/*.png`` of single objects.
- ``classnames.json`` (list, index = class), ``world.json`` (seed, sizes,
  categories, generator version, paths).

The world is built in a staging folder beside ``out`` and renamed into place,
so an interrupted run leaves no half-written world.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from eftclip.errors import EftclipError
from eftclip.guards import check_owned
from eftclip.io import dumps
from eftclip.progress import bars_enabled
from eftclip.world.captions import caption_for
from eftclip.world.categories import DEFAULT_CATEGORIES, SHAPES
from eftclip.world.regions import box_iou
from eftclip.world.render import BACKGROUNDS, Scene, background, render_scene

# bump when the drawing changes, so stale worlds are recognisable
GENERATOR_VERSION = "world-2"

# name of the class the reference split uses for crops that hold no object
BACKGROUND_CLASS = "background"


@dataclass(frozen=True)
class WorldSize:
    """How much of everything a world holds."""

    train: int  # training scenes (captioned)
    pool: int  # held-apart clean scenes for fine-tuning
    detect: int  # clean scenes for building detection sets
    reference_per_class: int  # reference crops per category (and background crops)
    eval_per_class: int  # zero-shot evaluation images per category
    objects_p: tuple[float, ...] = (0.6, 0.3, 0.1)  # P(1, 2, 3 objects) in a scene


SIZES: dict[str, WorldSize] = {
    "default": WorldSize(train=15000, pool=3000, detect=600, reference_per_class=250, eval_per_class=100),
    "quick": WorldSize(train=6000, pool=600, detect=150, reference_per_class=80, eval_per_class=30),
    # for unit tests: seconds to write
    "tiny": WorldSize(train=120, pool=40, detect=24, reference_per_class=12, eval_per_class=4),
}

# independent random streams per split: changing one split's size leaves the others alone
_STREAMS = {"train": 1, "pool": 2, "detect": 3, "reference": 4, "eval": 5}


def rle_encode(mask: np.ndarray) -> dict:
    """Run-length encode an HW bool mask, row-major, counts starting with a run of False.

    Returns ``{"size": [H, W], "counts": [int, ...]}``.
    """
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`rle_encode`: an HW bool mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise EftclipError(f"mask RLE covers {flat.size} pixels, expected {h}x{w}")
    return flat.reshape(h, w)


def _rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[split]]))


def _save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", optimize=False, compress_level=6)


def _draw_categories(categories: list[str], p: tuple[float, ...], rng: np.random.Generator) -> list[str]:
    k = int(rng.choice(len(p), p=np.asarray(p) / np.sum(p))) + 1
    k = min(k, len(categories))
    idx = rng.choice(len(categories), size=k, replace=False)
    return [categories[i] for i in idx]


def scene_record(scene: Scene, image_rel: str, caption: str) -> dict:
    """The ``*_meta.jsonl`` line for one scene."""
    return {
        "image": image_rel,
        "caption": caption,
        "background": scene.background,
        "objects": [
            {
                "category": o.category,
                "colour": o.colour,
                "rgb": list(o.rgb),
                "box": list(o.box),
                "mask_rle": rle_encode(o.mask),
            }
            for o in scene.objects
        ],
    }


def _write_scenes(root: Path, name: str, n: int, categories, size: WorldSize, image_size: int, rng, desc: str) -> None:
    folder = root / name
    rows, metas = [], []
    width = max(6, len(str(n)))
    for i in tqdm(range(n), desc=desc, file=sys.stderr, leave=False, mininterval=1.0, disable=not bars_enabled()):
        scene = render_scene(_draw_categories(categories, size.objects_p, rng), image_size, rng)
        rel = f"images/{i:0{width}d}.png"
        _save_png(folder / rel, scene.image)
        cap = caption_for(scene, rng)
        rows.append((rel, cap))
        metas.append(scene_record(scene, rel, cap))
    with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    with open(folder / f"{name}_meta.jsonl", "w", encoding="utf-8") as fh:
        for m in metas:
            fh.write(dumps(m) + "\n")


def crop_box(image: np.ndarray, box, margin: float = 0.0) -> np.ndarray:
    """Crop an XYXY pixel box (grown by ``margin`` pixels, clipped to the image) as HWC uint8."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    x0 = int(np.floor(max(0, x0 - margin)))
    y0 = int(np.floor(max(0, y0 - margin)))
    x1 = int(np.ceil(min(w, x1 + margin)))
    y1 = int(np.ceil(min(h, y1 + margin)))
    if x1 <= x0 or y1 <= y0:
        raise EftclipError(f"empty crop box {box} for a {w}x{h} image")
    return image[y0:y1, x0:x1].copy()


def _write_reference(root: Path, categories, size: WorldSize, image_size: int, rng) -> None:
    # object crops cut from full scenes (with neighbours and occlusion, as an oracle sees them)
    folder = root / "reference"
    counts = {c: 0 for c in categories}
    n_target = size.reference_per_class
    meta = []
    pbar = tqdm(total=n_target * len(categories), desc="reference", file=sys.stderr, leave=False, mininterval=1.0,
                disable=not bars_enabled())
    while min(counts.values()) < n_target:
        scene = render_scene(_draw_categories(categories, size.objects_p, rng), image_size, rng)
        for o in scene.objects:
            if counts[o.category] >= n_target:
                continue
            crop = crop_box(scene.image, o.box, margin=float(rng.integers(0, 3)))
            rel = f"{o.category}/{counts[o.category]:05d}.png"
            _save_png(folder / rel, crop)
            meta.append({"image": rel, "label": o.category, "background": scene.background})
            counts[o.category] += 1
            pbar.update(1)
    pbar.close()
    # "background" crops: boxes of object-like sizes on object-free backgrounds (even i), and
    # boxes in scenes that frame no object (odd i: IoU < 0.2 with every object box), so that
    # a region that is not a whole object is not forced onto a category
    kinds = list(BACKGROUNDS)
    i = 0
    while i < n_target:
        if i % 2 == 0:
            img, boxes = background(kinds[rng.integers(len(kinds))], image_size, rng), []
        else:
            scene = render_scene(_draw_categories(categories, size.objects_p, rng), image_size, rng)
            img, boxes = scene.image, [o.box for o in scene.objects]
        side_w = int(rng.integers(max(3, image_size // 6), image_size + 1))
        side_h = int(rng.integers(max(3, image_size // 6), image_size + 1))
        x0 = int(rng.integers(0, image_size - side_w + 1))
        y0 = int(rng.integers(0, image_size - side_h + 1))
        box = (x0, y0, x0 + side_w, y0 + side_h)
        if any(box_iou(box, b) >= 0.2 for b in boxes):
            continue
        rel = f"{BACKGROUND_CLASS}/{i:05d}.png"
        _save_png(folder / rel, img[y0 : y0 + side_h, x0 : x0 + side_w])
        meta.append({"image": rel, "label": BACKGROUND_CLASS, "kind": "plain" if i % 2 == 0 else "scene"})
        i += 1
    with open(folder / "reference_meta.jsonl", "w", encoding="utf-8") as fh:
        for m in meta:
            fh.write(dumps(m) + "\n")


def _write_eval(root: Path, categories, size: WorldSize, image_size: int, rng) -> None:
    for cat in tqdm(categories, desc="eval", file=sys.stderr, leave=False, disable=not bars_enabled()):
        for i in range(size.eval_per_class):
            scene = render_scene([cat], image_size, rng)
            _save_png(root / "eval" / cat / f"{i:05d}.png", scene.image)


def synth(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    size: str | WorldSize = "default",
    image_size: int = 32,
    categories: list[str] | None = None,
    train: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Generate a world into ``out`` and return the paths of its parts.

    ``size`` names a preset of :data:`SIZES` (``"default"``, ``"quick"``, ``"tiny"``)
    or is a :class:`WorldSize`; ``train`` overrides the number of training scenes.
    ``categories`` defaults to :data:`DEFAULT_CATEGORIES` (twelve, umbrella first).
    Same arguments -> byte-identical files.  An existing non-empty ``out`` is an
    error unless ``overwrite``.

    Returns ``{"root", "train_csv", "train_meta", "pool_csv", "pool_meta",
    "detect_csv", "detect_meta", "reference", "eval", "classnames", "world"}``
    (absolute path strings).
    """
    out = Path(out).absolute()
    if isinstance(size, str):
        if size not in SIZES:
            raise EftclipError(f"unknown world size {size!r}; known: {', '.join(SIZES)}")
        size_name, wsize = size, SIZES[size]
    else:
        size_name, wsize = "custom", size
    if train is not None:
        if train < 1:
            raise EftclipError(f"--train must be at least 1, got {train}")
        wsize = replace(wsize, train=int(train))
    if image_size < 16:
        raise EftclipError(f"image size must be at least 16 px, got {image_size}")
    categories = list(categories or DEFAULT_CATEGORIES)
    unknown = [c for c in categories if c not in SHAPES]
    if unknown:
        raise EftclipError(f"unknown world categories {unknown}; known: {', '.join(SHAPES)}")
    if len(set(categories)) != len(categories) or BACKGROUND_CLASS in categories:
        raise EftclipError("world categories must be distinct and must not include 'background'")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise EftclipError(f"{out}: already exists and is not empty (pass overwrite / --overwrite)")
    # --overwrite replaces a world, never an arbitrary folder: world.json proves eftclip wrote it
    check_owned(out, "world.json", "--out", "a world")

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        _write_scenes(stage, "train", wsize.train, categories, wsize, image_size, _rng(seed, "train"), "train")
        _write_scenes(stage, "pool", wsize.pool, categories, wsize, image_size, _rng(seed, "pool"), "pool")
        _write_scenes(stage, "detect", wsize.detect, categories, wsize, image_size, _rng(seed, "detect"), "detect")
        _write_reference(stage, categories, wsize, image_size, _rng(seed, "reference"))
        _write_eval(stage, categories, wsize, image_size, _rng(seed, "eval"))
        with open(stage / "classnames.json", "w", encoding="utf-8") as fh:
            fh.write(dumps(categories, indent=2) + "\n")
        info = {
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "size": size_name,
            "sizes": asdict(wsize),
            "image_size": int(image_size),
            "categories": categories,
            "backgrounds": list(BACKGROUNDS),
            "reference_background_class": BACKGROUND_CLASS,
        }
        with open(stage / "world.json", "w", encoding="utf-8") as fh:
            fh.write(dumps(info, indent=2) + "\n")
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            shutil.rmtree(trash)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return world_paths(out)


def world_paths(root: str | os.PathLike) -> dict:
    """Paths of the parts of the world at ``root`` (absolute strings); checks it is a world."""
    root = Path(root).absolute()
    if not (root / "world.json").is_file():
        raise EftclipError(f"{root}: not a synthetic world (no world.json); create one with `eftclip world synth`")
    p = {
        "root": root,
        "train_csv": root / "train" / "train.csv",
        "train_meta": root / "train" / "train_meta.jsonl",
        "pool_csv": root / "pool" / "pool.csv",
        "pool_meta": root / "pool" / "pool_meta.jsonl",
        "detect_csv": root / "detect" / "detect.csv",
        "detect_meta": root / "detect" / "detect_meta.jsonl",
        "reference": root / "reference",
        "eval": root / "eval",
        "classnames": root / "classnames.json",
        "world": root / "world.json",
    }
    return {k: str(v) for k, v in p.items()}
