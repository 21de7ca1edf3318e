"""Class-agnostic region proposals for the world's scenes (no ground truth read).

The world paints objects in one flat colour over backgrounds that always
carry per-pixel noise.  So a region is a connected area of (nearly) constant
colour: 4-neighbours whose colours differ by at most ``tolerance`` in every
channel are joined, and components of at least ``min_pixels`` pixels are kept.
Noisy background breaks into specks below the size floor; a checkerboard
trigger patch breaks into single pixels.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes
from skimage.measure import label


def _flat_labels(image: np.ndarray, tolerance: int) -> np.ndarray:
    """Label image (HW int) of tolerance-connected components (union of neighbour joins)."""
    h, w = image.shape[:2]
    x = image.astype(np.int16)
    join_r = np.abs(x[:, 1:] - x[:, :-1]).max(axis=2) <= tolerance  # (H, W-1)
    join_d = np.abs(x[1:] - x[:-1]).max(axis=2) <= tolerance  # (H-1, W)
    # a pixel with no similar neighbour is a speck; the rest form components through the
    # joins, found as connected components of a 2x-upsampled grid whose in-between cells
    # are set where a join exists (so skimage's label does the union)
    grid = np.zeros((2 * h - 1, 2 * w - 1), bool)
    grid[::2, ::2] = True
    grid[::2, 1::2] = join_r
    grid[1::2, ::2] = join_d
    lab = label(grid, connectivity=1, background=0)
    return lab[::2, ::2]


def propose(
    image: np.ndarray,
    *,
    method: str = "auto",
    tolerance: int = 3,
    min_pixels: int = 10,
    max_fraction: float = 0.9,
    fill_holes: bool = False,
) -> list[tuple[tuple[float, float, float, float], np.ndarray]]:
    """Class-agnostic regions of an HWC uint8 image, largest first.

    Returns ``[(box XYXY pixels (x1, y1 exclusive), mask HW bool), ...]``.
    ``method``: ``"flat"`` (tolerance-connected flat colour, exact on clean
    world scenes), ``"felzenszwalb"`` (skimage graph segmentation: survives an
    image-wide blend that leaves no flat pixel, at the price of more regions) or
    ``"auto"`` (flat, and felzenszwalb when flat finds nothing).
    ``tolerance`` is the largest per-channel difference (0-255) between joined
    neighbours; regions smaller than ``min_pixels`` or covering more than
    ``max_fraction`` of the image are dropped; ``fill_holes`` fills enclosed
    holes of each mask (a house's door, a fish's eye).
    """
    if method not in ("auto", "flat", "felzenszwalb"):
        from eftclip.errors import EftclipError

        raise EftclipError(f"unknown region method {method!r}; known: auto, flat, felzenszwalb")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        from eftclip.errors import EftclipError

        raise EftclipError(f"propose expects an HWC uint8 RGB image, got {image.dtype} {image.shape}")
    if method == "felzenszwalb":
        return _regions(_felzenszwalb_labels(image), min_pixels, max_fraction, fill_holes)
    out = _regions(_flat_labels(image, tolerance), min_pixels, max_fraction, fill_holes)
    if not out and method == "auto":
        out = _regions(_felzenszwalb_labels(image), min_pixels, max_fraction, fill_holes)
    return out


def _felzenszwalb_labels(image: np.ndarray) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=100.0, sigma=0.8, min_size=20) + 1


def _regions(lab: np.ndarray, min_pixels: int, max_fraction: float, fill_holes: bool):
    h, w = lab.shape
    counts = np.bincount(lab.ravel())
    out = []
    for value in np.argsort(-counts):
        n = counts[value]
        if n < min_pixels:
            break
        if value == 0 or n > max_fraction * h * w:
            continue
        mask = lab == value
        if fill_holes:
            mask = binary_fill_holes(mask)
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        out.append((box, mask))
    return out


def box_iou(a, b) -> float:
    """IoU of two XYXY boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
