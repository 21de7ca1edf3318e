"""The world's object categories: silhouettes defined as implicit shapes.

Every category is a function ``inside(x, y) -> bool array`` over local
coordinates in ``[-1, 1]`` (x to the right, y downwards; arrays of any equal
shape).  Shapes were chosen to stay distinguishable as flat-coloured
silhouettes at 14-28 px: each has a distinctive part (a handle, a hole, a
mast, wheels, points) rather than only a different outline.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _poly(x: np.ndarray, y: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points (loop over edges)."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        xint = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xint)
    return inside


def _disc(x, y, cx, cy, r):
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _rect(x, y, x0, y0, x1, y1):
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _ring(x, y, cx, cy, r_out, r_in):
    d2 = (x - cx) ** 2 + (y - cy) ** 2
    return (d2 <= r_out * r_out) & (d2 >= r_in * r_in)


def umbrella(x, y):
    # domed canopy with a scalloped rim, a shaft and a hooked handle
    canopy = _disc(x, y, 0, 0.05, 0.95) & (y <= 0.05)
    scallops = _disc(x, y, -0.63, 0.05, 0.32) | _disc(x, y, 0.0, 0.05, 0.32) | _disc(x, y, 0.63, 0.05, 0.32)
    canopy &= ~(scallops & (y > -0.12))
    shaft = _rect(x, y, -0.09, -0.1, 0.09, 0.72)
    hook = _ring(x, y, -0.25, 0.72, 0.34, 0.16) & (y >= 0.72)
    return canopy | shaft | hook


def boat(x, y):
    # hull, mast and a triangular sail
    hull = _poly(x, y, [(-0.95, 0.35), (0.95, 0.35), (0.6, 0.8), (-0.6, 0.8)])
    mast = _rect(x, y, -0.06, -0.95, 0.06, 0.4)
    sail = _poly(x, y, [(0.12, -0.85), (0.12, 0.25), (0.8, 0.25)])
    return hull | mast | sail


def tree(x, y):
    # pine: three stacked triangles on a trunk
    t1 = _poly(x, y, [(0, -1.0), (0.45, -0.45), (-0.45, -0.45)])
    t2 = _poly(x, y, [(0, -0.65), (0.7, 0.05), (-0.7, 0.05)])
    t3 = _poly(x, y, [(0, -0.25), (0.95, 0.55), (-0.95, 0.55)])
    trunk = _rect(x, y, -0.15, 0.5, 0.15, 1.0)
    return t1 | t2 | t3 | trunk


def house(x, y):
    # square body with a pitched roof and a door cut out of it
    body = _rect(x, y, -0.75, -0.1, 0.75, 0.95)
    roof = _poly(x, y, [(-0.98, -0.05), (0.0, -0.95), (0.98, -0.05)])
    door = _rect(x, y, -0.2, 0.4, 0.2, 0.96)
    return (body | roof) & ~door


def car(x, y):
    # long body, a cabin on top and two wheels below
    body = _rect(x, y, -0.98, -0.05, 0.98, 0.45)
    cabin = _poly(x, y, [(-0.55, -0.05), (-0.3, -0.55), (0.35, -0.55), (0.6, -0.05)])
    wheels = _disc(x, y, -0.55, 0.52, 0.28) | _disc(x, y, 0.55, 0.52, 0.28)
    return body | cabin | wheels


def fish(x, y):
    # oval body with a forked tail and an eye hole
    body = _ellipse(x, y, 0.2, 0.0, 0.72, 0.45)
    tail = _poly(x, y, [(-0.45, 0.0), (-0.98, -0.5), (-0.98, 0.5)])
    eye = _disc(x, y, 0.55, -0.1, 0.1)
    return (body | tail) & ~eye


def star(x, y):
    # five-pointed star
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -np.pi / 2 + k * np.pi / 5
        pts.append((r * np.cos(a), r * np.sin(a) + 0.08))
    return _poly(x, y, pts)


def heart(x, y):
    lobes = _disc(x, y, -0.45, -0.35, 0.5) | _disc(x, y, 0.45, -0.35, 0.5)
    point = _poly(x, y, [(-0.93, -0.22), (0.93, -0.22), (0.0, 0.95)])
    return lobes | point


def cup(x, y):
    # tapered mug with a ring handle on the right
    body = _poly(x, y, [(-0.75, -0.75), (0.4, -0.75), (0.3, 0.8), (-0.65, 0.8)])
    handle = _ring(x, y, 0.42, 0.0, 0.5, 0.25) & (x > 0.3)
    return body | handle


def key(x, y):
    # ring bow on the left, a shaft and two teeth
    bow = _ring(x, y, -0.6, 0.0, 0.4, 0.18)
    shaft = _rect(x, y, -0.25, -0.1, 0.98, 0.1)
    teeth = _rect(x, y, 0.55, 0.05, 0.7, 0.45) | _rect(x, y, 0.8, 0.05, 0.98, 0.35)
    return bow | shaft | teeth


def moon(x, y):
    # crescent: a disc minus an offset disc
    return _disc(x, y, 0.0, 0.0, 0.95) & ~_disc(x, y, 0.45, -0.2, 0.78)


def arrow(x, y):
    # shaft and a triangular head pointing right
    shaft = _rect(x, y, -0.95, -0.15, 0.25, 0.15)
    head = _poly(x, y, [(0.2, -0.6), (0.98, 0.0), (0.2, 0.6)])
    return shaft | head


def bell(x, y):
    # flared bell with a clapper ball under it
    body = _poly(x, y, [(-0.35, -0.75), (0.35, -0.75), (0.55, 0.1), (0.9, 0.5), (-0.9, 0.5), (-0.55, 0.1)])
    top = _disc(x, y, 0.0, -0.75, 0.36)
    clapper = _disc(x, y, 0.0, 0.72, 0.2)
    return body | top | clapper


def cross(x, y):
    # plus sign
    return _rect(x, y, -0.25, -0.95, 0.25, 0.95) | _rect(x, y, -0.95, -0.25, 0.95, 0.25)


# name -> implicit shape.  Order fixes class indices: keep it stable (append only).
SHAPES: dict[str, Shape] = {
    "umbrella": umbrella,
    "boat": boat,
    "tree": tree,
    "house": house,
    "car": car,
    "fish": fish,
    "star": star,
    "heart": heart,
    "cup": cup,
    "key": key,
    "moon": moon,
    "arrow": arrow,
    "bell": bell,
    "cross": cross,
}

# the twelve categories a world uses unless told otherwise
DEFAULT_CATEGORIES: tuple[str, ...] = tuple(list(SHAPES)[:12])


def rasterize(name: str, size: int, *, angle: float = 0.0, flip: bool = False, supersample: int = 3) -> np.ndarray:
    """Draw category ``name`` as a ``(size, size)`` HW bool mask filling the square.

    ``angle`` is a rotation in radians, ``flip`` mirrors left-right; a pixel is
    inside when at least half of its ``supersample**2`` sub-samples are.
    """
    if name not in SHAPES:
        from eftclip.errors import EftclipError

        raise EftclipError(f"unknown world category {name!r}; known: {', '.join(SHAPES)}")
    n = size * supersample
    c = (np.arange(n) + 0.5) / n * 2.0 - 1.0  # sub-pixel centres in [-1, 1]
    yy, xx = np.meshgrid(c, c, indexing="ij")
    # rotate the sampling grid by -angle: rotates the shape by +angle
    ca, sa = np.cos(angle), np.sin(angle)
    x = ca * xx + sa * yy
    y = -sa * xx + ca * yy
    if flip:
        x = -x
    sub = SHAPES[name](x, y)
    cover = sub.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return cover >= 0.5
