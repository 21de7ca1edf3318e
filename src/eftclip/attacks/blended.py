"""Blended (Chen et al., 2017): a full-image pattern mixed into the image with a low opacity.

``out = alpha * pattern + (1 - alpha) * image`` over every pixel, so each
pixel moves by at most ``alpha * 255`` (plus rounding).  The pattern is noise
drawn once from ``pattern_seed`` at ``pattern_size`` x ``pattern_size`` and
resized to each image (nearest neighbour, so the noise keeps its contrast at
any scale and is the same picture on images of different sizes), or an image
file resized to each image (bilinear).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eftclip.attacks.badnet import noise_pattern
from eftclip.attacks.base import (
    Trigger,
    TriggerResult,
    blend,
    check_alpha,
    check_image,
    load_pattern_image,
    register_trigger,
    resize_pattern,
)


@register_trigger("blended")
@dataclass(frozen=True)
class BlendedTrigger(Trigger):
    """A whole-image pattern blended with opacity ``alpha``; the mask is the whole image."""

    pattern: str = "noise"  # "noise" or a path to an image file
    alpha: float = 0.2  # opacity of the pattern in (0, 1]
    pattern_seed: int = 0  # seed of the noise pattern
    pattern_size: int = 224  # side in pixels at which the noise is drawn before resizing

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if self.pattern_size < 1:
            raise ValueError(f"pattern_size must be at least 1 pixel, got {self.pattern_size}")
        if self.pattern != "noise":
            path = Path(self.pattern).expanduser()
            if not path.is_file():
                raise ValueError(f"pattern {self.pattern!r} is neither 'noise' nor an existing image file")
            object.__setattr__(self, "pattern", str(path.resolve()))
            load_pattern_image(path)

    @functools.cached_property
    def _base(self) -> np.ndarray:
        if self.pattern == "noise":
            return noise_pattern(self.pattern_size, self.pattern_seed)
        return load_pattern_image(self.pattern)

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a handful of image sizes per dataset
    def pattern_for(self, hw: tuple[int, int]) -> np.ndarray:
        """The pattern resized to an image of ``hw`` (height, width), HWC uint8."""
        return resize_pattern(self._base, hw, nearest=self.pattern == "noise")

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> TriggerResult:
        image = check_image(image)
        return blend(image, self.pattern_for(tuple(image.shape[:2])), self.alpha)
