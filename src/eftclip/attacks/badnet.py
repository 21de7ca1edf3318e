"""BadNet (Gu et al., 2017): a small visible patch stamped onto the image.

The patch is the same on every image (its noise is drawn once from
``pattern_seed``), so the model can learn it; only its position may change
from image to image (``position="random"`` draws it from the per-image rng).
The paper's detection experiments vary the size rho (8, 16 px) and the
position mu (random, top-left, bottom-right).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eftclip.attacks.base import (
    PatchTrigger,
    check_alpha,
    check_position,
    load_pattern_image,
    register_trigger,
    resize_pattern,
)

#: built-in patch patterns; any other value is read as an image file path
BADNET_PATTERNS = ("noise", "yellow", "checkerboard")


def noise_pattern(size: int | tuple[int, int], seed: int) -> np.ndarray:
    """Uniform RGB noise, HWC uint8, from a generator seeded with ``seed`` (same seed, same noise)."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def checkerboard_pattern(size: int, cells: int = 4) -> np.ndarray:
    """Black-and-white checkerboard of ``cells`` x ``cells`` squares, HWC uint8 (top-left white)."""
    idx = (np.arange(size) * cells) // size  # cell index of each pixel row/column
    board = ((idx[:, None] + idx[None, :]) % 2 == 0).astype(np.uint8) * 255
    return np.repeat(board[..., None], 3, axis=2)


@register_trigger("badnet")
@dataclass(frozen=True)
class BadNetTrigger(PatchTrigger):
    """A ``size`` x ``size`` px patch at ``position``.

    ``pattern``: ``noise``, ``yellow``, ``checkerboard`` or a path to an image
    file (resized to the patch size).
    """

    pattern: str = "noise"  # noise | yellow | checkerboard | path to an image file
    size: int = 16  # rho: patch side in pixels (on 32 px images pass 4-8)
    position: str = "bottom-right"  # mu: top-left, top-right, bottom-left, bottom-right, center, random, or "x,y"
    pattern_seed: int = 0  # seed of the noise pattern (drawn once, the same on every image)
    alpha: float = 1.0  # patch opacity in (0, 1]; 1 replaces the pixels

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1 pixel, got {self.size}")
        check_alpha(self.alpha)
        object.__setattr__(self, "position", check_position(self.position))
        if self.pattern not in BADNET_PATTERNS:
            path = Path(self.pattern).expanduser()
            if not path.is_file():
                raise ValueError(
                    f"pattern {self.pattern!r} is neither one of {', '.join(BADNET_PATTERNS)} "
                    "nor an existing image file"
                )
            # absolute, so that params() in a manifest rebuilds the trigger from anywhere
            object.__setattr__(self, "pattern", str(path.resolve()))
            load_pattern_image(path)  # fail now, not on the first image

    @functools.cached_property
    def _patch(self) -> np.ndarray:
        if self.pattern == "noise":
            return noise_pattern(self.size, self.pattern_seed)
        if self.pattern == "yellow":
            out = np.zeros((self.size, self.size, 3), dtype=np.uint8)
            out[..., 0] = 255
            out[..., 1] = 255
            return out
        if self.pattern == "checkerboard":
            return checkerboard_pattern(self.size)
        return resize_pattern(load_pattern_image(self.pattern), (self.size, self.size))

    def patch(self) -> np.ndarray:
        return self._patch
