"""Trigger recovery by occlusion: which pixels, when covered, take the K prediction away.

For each flagged image and each square window (several sides, a fixed
stride), the window is filled with the image's mean colour and the relative
drop of K's margin (see :mod:`eftclip.detection.trigger_scorer`) is measured:
``d = clip((m0 - m) / m0, 0, 1)``; ``d = 1`` means K is no longer the answer.  Averaged over the
flagged images, a window side gives each pixel a *contrast*: the mean drop of
the windows that cover it minus the mean drop of those that do not (a pixel
outside the trigger is covered by about as many helpful windows as it is not).

Rule for the mask (why: the smallest window that still removes K outlines the
trigger, a larger one only a block around it; and a trigger stamped at one place
is the same pixels in every flagged image, while the scenes differ):

1. a window side is *informative* when some window lowers K's margin by at least
   ``min_drop`` on average over the images (only images answered K count);
2. the *region* is the union of the windows of the smallest informative side
   that do so: the trigger lies inside it;
3. inside the region, the trigger's pixels are those that barely vary across
   the flagged images (median absolute deviation from the per-pixel median at
   most ``spread`` grey levels in every channel);
4. when step 3 keeps nothing (a trigger that changes from image to image), the
   heat decides: the heat of a pixel is the minimum of its contrast over the
   informative sides (it must matter at every scale that can remove K), and
   ``mask = heat >= threshold * max(heat)``.

No informative side means no localised trigger: an empty mask.

The pattern is the per-pixel median of the flagged images inside the mask
(zero outside).  This finds triggers that sit at the same place in every
flagged image (BadNet, TrojanNet, Trojaning-style patches at a fixed corner);
a full-image blend or warp leaves no such pixels (see the optimising method).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eftclip.detection.trigger_scorer import KScorer, margins, to_tensor
from eftclip.errors import EftclipError

__all__ = ["OcclusionConfig", "occlusion_heat", "recover_by_occlusion", "windows"]


@dataclass(frozen=True)
class OcclusionConfig:
    """Settings of the occlusion method."""

    sizes: tuple[float, ...] = (0.125, 0.25)  # window sides as fractions of the image's shorter side
    stride: float = 0.5  # step between windows as a fraction of the window side (the last window touches the edge)
    min_drop: float = 0.5  # least mean relative drop of K's margin for a window side to count as informative
    threshold: float = 0.5  # fallback rule: mask = heat >= threshold * max(heat), threshold in (0, 1]
    spread: float = 16.0  # a trigger pixel's median absolute deviation across flagged images, in grey levels (0-255)
    max_images: int = 64  # use at most this many flagged images answered K (those with the largest margins)
    batch_size: int = 256  # occluded images per forward pass


def _starts(length: int, side: int, step: int) -> list[int]:
    starts = list(range(0, length - side + 1, step))
    if starts[-1] != length - side:
        starts.append(length - side)  # so that the far edge is covered like the near one
    return starts


def windows(hw: tuple[int, int], side: int, step: int) -> np.ndarray:
    """Windows ``(W, 4)`` as ``(y, x, side, side)`` rows covering an ``hw`` image, edges included."""
    ys, xs = _starts(hw[0], side, step), _starts(hw[1], side, step)
    return np.array([(y, x, side, side) for y in ys for x in xs], dtype=np.int64)


def _relative_drops(x: torch.Tensor, base: torch.Tensor, wins: np.ndarray, scorer: KScorer,
                    batch_size: int) -> torch.Tensor:
    """``(N, W)`` relative drops of K's margin when each window of ``wins`` is filled with each image's mean colour."""
    fill = x.mean(dim=(2, 3), keepdim=True)  # (N, 3, 1, 1)
    drops = torch.empty(len(x), len(wins))
    for n in range(len(x)):
        occluded = x[n:n + 1].repeat(len(wins), 1, 1, 1)
        for w, (y, xx, h, s) in enumerate(wins):
            occluded[w, :, y:y + h, xx:xx + s] = fill[n, :, :, :]
        m = margins(scorer, occluded, batch_size)
        drops[n] = ((base[n] - m) / base[n].clamp_min(1e-6)).clamp(0, 1)
    return drops


def _contrast(mean_drop: np.ndarray, wins: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HW: mean drop of the windows covering each pixel minus that of the windows not covering it."""
    cover = np.zeros((len(wins), *hw), dtype=np.float32)
    for w, (y, x, h, s) in enumerate(wins):
        cover[w, y:y + h, x:x + s] = 1.0
    n_in = cover.sum(axis=0)
    sum_in = np.tensordot(mean_drop, cover, axes=1)
    inside = sum_in / np.maximum(n_in, 1)
    outside = (mean_drop.sum() - sum_in) / np.maximum(len(wins) - n_in, 1)
    return inside - outside


def occlusion_heat(images: np.ndarray, scorer: KScorer, cfg: OcclusionConfig
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Heat map (HW float, rule step 4), region (HW bool, step 2) and per-side statistics for NHWC uint8 images."""
    x = to_tensor(images)
    hw = tuple(x.shape[-2:])
    base = margins(scorer, x, cfg.batch_size)
    heats, sides, region = [], {}, None
    for frac in sorted(cfg.sizes):
        side = max(1, int(round(frac * min(hw))))
        wins = windows(hw, side, max(1, int(round(cfg.stride * side))))
        mean_drop = _relative_drops(x, base, wins, scorer, cfg.batch_size).mean(dim=0).numpy()
        informative = bool(mean_drop.max() >= cfg.min_drop)
        sides[side] = {"windows": len(wins), "max_mean_drop": round(float(mean_drop.max()), 4),
                       "informative": informative}
        if informative:
            heats.append(_contrast(mean_drop, wins, hw))
            if region is None:
                region = _union(wins[mean_drop >= cfg.min_drop], hw)
    heat = np.min(np.stack(heats), axis=0) if heats else np.zeros(hw, dtype=np.float32)
    region = np.zeros(hw, dtype=bool) if region is None else region
    return heat.astype(np.float32), region, {"sides": sides, "mean_margin": round(float(base.mean()), 4)}


def _union(wins: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    out = np.zeros(hw, dtype=bool)
    for y, x, h, s in wins:
        out[y:y + h, x:x + s] = True
    return out


def _steady(images: np.ndarray, median: np.ndarray, spread: float) -> np.ndarray:
    """HW bool: pixels whose median absolute deviation across images is at most ``spread`` in every channel."""
    mad = np.median(np.abs(images.astype(np.int16) - median.astype(np.int16)), axis=0)
    return np.all(mad <= spread, axis=2)


def recover_by_occlusion(flagged: np.ndarray, scorer: KScorer, cfg: OcclusionConfig = OcclusionConfig(), *,
                         clean: np.ndarray | None = None, rng: torch.Generator | None = None
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mask (HW float in {0, 1}), pattern (HWC uint8) and details from flagged images (NHWC uint8).

    An empty mask (``details["found_patch"]`` False) when no window side is
    informative or the model answers K on none of the flagged images.

    ``clean`` and ``rng`` are accepted for the method protocol and not needed:
    occlusion reads only the flagged images and the scorer.
    """
    if not 0 < cfg.threshold <= 1:
        raise EftclipError(f"occlusion threshold must be in (0, 1], got {cfg.threshold}")
    if len(flagged) == 0:
        raise EftclipError("occlusion needs at least one flagged image")
    margin = margins(scorer, to_tensor(flagged), cfg.batch_size).numpy()
    strongest = [i for i in np.argsort(-margin, kind="stable") if margin[i] > 0][: cfg.max_images]
    if not strongest:  # nothing to occlude: say so, and let a caller try another method
        return (np.zeros(flagged.shape[1:3], np.float32), np.zeros(flagged.shape[1:], np.uint8),
                {"images_used": 0, "rule": "none", "found_patch": False,
                 "why": f"the model answers K on none of the {len(flagged)} flagged images"})
    images = flagged[np.sort(strongest)]
    heat, region, details = occlusion_heat(images, scorer, cfg)
    median = np.median(images, axis=0).astype(np.uint8)
    steady = region & _steady(images, median, cfg.spread)
    peak = float(heat.max())
    rule = "steady pixels in the region" if steady.any() else "heat" if region.any() else "none"
    mask = {"steady pixels in the region": steady, "heat": heat >= cfg.threshold * peak,
            "none": np.zeros(heat.shape, dtype=bool)}[rule].astype(np.float32)
    pattern = median * (mask[..., None] > 0)
    details.update({"images_used": len(images), "peak_heat": round(peak, 4), "region_area": int(region.sum()),
                    "rule": rule, "found_patch": rule != "none"})
    return mask, pattern.astype(np.uint8), details
