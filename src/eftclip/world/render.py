"""Drawing the world's scenes: textured backgrounds and flat-coloured objects.

Backgrounds always carry per-pixel noise and objects are painted in one flat
colour; that contrast is what makes class-agnostic region proposals possible
(see :mod:`eftclip.world.regions`) without reading the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from eftclip.world.categories import rasterize

# colour name -> RGB; shared by all categories so that colour never names a label
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 170, 60),
    "blue": (35, 70, 215),
    "purple": (135, 50, 185),
    "pink": (245, 120, 190),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
    "brown": (125, 75, 35),
}

# background name -> caption phrases (one is drawn per caption; "" = place not named)
BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "grass": ("on grass", "on the grass", "in a field"),
    "sand": ("on sand", "on the beach", "on the sand"),
    "water": ("in water", "on the water", "in the sea"),
    "snow": ("in snow", "on snow", "in the snow"),
    "plain": ("", "on a plain background", ""),
}

# objects must differ from the background under them by at least this RGB distance
MIN_CONTRAST = 90.0


@dataclass(frozen=True)
class SceneObject:
    """One object placed in a scene."""

    category: str  # category name (key of categories.SHAPES)
    colour: str  # colour name (key of PALETTE)
    rgb: tuple[int, int, int]  # exact flat colour painted (palette colour with jitter)
    box: tuple[float, float, float, float]  # XYXY pixels of the visible mask (x1, y1 exclusive)
    mask: np.ndarray = field(repr=False)  # HW bool, visible pixels only (later objects occlude)


@dataclass(frozen=True)
class Scene:
    """A rendered scene: the image and what is in it."""

    image: np.ndarray  # HWC uint8 RGB
    background: str  # key of BACKGROUNDS
    objects: tuple[SceneObject, ...]


def background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 textured background of the named kind.

    Every kind has per-pixel noise (std >= 6 per channel) so that no large
    region of the background is a single flat colour.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    if kind == "grass":
        base = np.array([70, 140, 50], np.float32) + rng.uniform(-20, 20, 3)
        streak = rng.normal(0, 18, (1, size, 1)).astype(np.float32)  # vertical blades
        img = base + streak + (yy[..., None] * 30 - 15)
    elif kind == "sand":
        base = np.array([215, 190, 130], np.float32) + rng.uniform(-15, 15, 3)
        img = base + (xx[..., None] * 20 - 10) + rng.normal(0, 6, (size, size, 1))
    elif kind == "water":
        base = np.array([40, 110, 185], np.float32) + rng.uniform(-20, 20, 3)
        freq, phase = rng.uniform(4, 9), rng.uniform(0, 2 * np.pi)
        waves = 18 * np.sin(yy * freq * np.pi + phase + 2 * np.sin(xx * 3 * np.pi))
        img = base + waves[..., None] * np.array([0.6, 0.8, 1.0], np.float32)
    elif kind == "snow":
        base = np.array([225, 230, 240], np.float32) + rng.uniform(-15, 10, 3)
        img = base - yy[..., None] * 25
    elif kind == "plain":
        c0 = rng.uniform(30, 225, 3).astype(np.float32)
        c1 = rng.uniform(30, 225, 3).astype(np.float32)
        a = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)), 0, 1)[..., None]
        img = c0 * (1 - t) + c1 * t
    else:
        from eftclip.errors import EftclipError

        raise EftclipError(f"unknown background {kind!r}; known: {', '.join(BACKGROUNDS)}")
    img = img + rng.normal(0, 8, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _pick_colour(
    region_mean: np.ndarray, rng: np.random.Generator, avoid: set[str] = frozenset()
) -> tuple[str, tuple[int, int, int]]:
    # objects in one scene get different colours so that touching objects stay separable
    names = [n for n in PALETTE if n not in avoid]
    for _ in range(50):
        name = names[rng.integers(len(names))]
        rgb = np.clip(np.array(PALETTE[name]) + rng.integers(-12, 13, 3), 0, 255)
        if np.linalg.norm(rgb - region_mean) >= MIN_CONTRAST:
            return name, tuple(int(v) for v in rgb)
    # fall back to the palette colour furthest from the background
    name = max(names, key=lambda n: np.linalg.norm(np.array(PALETTE[n]) - region_mean))
    return name, PALETTE[name]


# rotations are drawn on a grid of this step (radians) so that silhouettes can be cached
ANGLE_STEP = 0.05


@lru_cache(maxsize=20000)
def _silhouette(category: str, side: int, angle_index: int, flip: bool) -> np.ndarray:
    mask = rasterize(category, side, angle=angle_index * ANGLE_STEP, flip=flip)
    mask.setflags(write=False)
    return mask


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def render_scene(
    categories: list[str],
    size: int,
    rng: np.random.Generator,
    *,
    bg: str | None = None,
    scale: tuple[float, float] | None = None,
    max_rotation: float = 0.26,
    min_visible: float = 0.7,
) -> Scene:
    """Render a scene with one object per entry of ``categories`` (drawn in that order).

    ``scale`` is the object's side as a fraction of ``size`` (defaults shrink with
    the number of objects so that they fit); rotation is uniform in
    ``+-max_rotation`` radians plus a random left-right flip.  An object that
    cannot be placed with ``min_visible`` of its pixels unoccluded (after 30
    tries) is left out, so the returned scene may hold fewer objects.
    """
    if bg is None:
        bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    image = background(bg, size, rng)
    n = len(categories)
    if scale is None:
        scale = {1: (0.5, 0.9), 2: (0.42, 0.62)}.get(n, (0.36, 0.5))
    owner = np.full((size, size), -1, dtype=np.int16)  # which object owns each pixel
    full_masks: list[np.ndarray] = []
    placed: list[tuple[str, str, tuple[int, int, int]]] = []
    for cat in categories:
        for _ in range(30):
            side = int(round(rng.uniform(*scale) * size))
            side = max(4, min(side, size))
            angle_index = int(round(rng.uniform(-max_rotation, max_rotation) / ANGLE_STEP))
            shape = _silhouette(cat, side, angle_index, bool(rng.integers(2)))
            x0 = int(rng.integers(0, size - side + 1))
            y0 = int(rng.integers(0, size - side + 1))
            full = np.zeros((size, size), bool)
            full[y0 : y0 + side, x0 : x0 + side] = shape
            # the new object is drawn on top: earlier objects must keep enough of themselves
            ok = True
            for j, fm in enumerate(full_masks):
                vis = (owner == j) & ~full
                if vis.sum() < min_visible * fm.sum():
                    ok = False
                    break
            if ok and full.sum() > 0:
                break
        else:
            continue
        colour, rgb = _pick_colour(image[full].reshape(-1, 3).mean(0), rng, {p[1] for p in placed})
        image[full] = rgb
        owner[full] = len(full_masks)
        full_masks.append(full)
        placed.append((cat, colour, rgb))
    objects = []
    for j, (cat, colour, rgb) in enumerate(placed):
        mask = owner == j
        objects.append(SceneObject(category=cat, colour=colour, rgb=rgb, box=_box_of(mask), mask=mask))
    return Scene(image=image, background=bg, objects=tuple(objects))
