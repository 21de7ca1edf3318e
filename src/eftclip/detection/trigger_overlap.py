"""How well a recovered trigger mask overlaps the true one, where the true trigger is known (scoring only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from eftclip.errors import EftclipError

__all__ = ["mask_iou", "true_trigger_mask"]


def mask_iou(recovered_mask: np.ndarray, true_mask: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union of ``recovered_mask >= threshold`` and ``true_mask >= threshold``.

    Both masks are HW (bool, or float in [0, 1]) of the same size; a float true
    mask (the share of images where the trigger touched a pixel, from
    :func:`true_trigger_mask`) is binarised by the same threshold.  Two empty
    masks overlap perfectly (1.0).
    """
    rec, true = np.asarray(recovered_mask), np.asarray(true_mask)
    if rec.shape != true.shape or rec.ndim != 2:
        raise EftclipError(f"mask_iou needs two HW masks of one size, got {rec.shape} and {true.shape}")
    a, b = rec.astype(np.float32) >= threshold, true.astype(np.float32) >= threshold
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union


def true_trigger_mask(trigger, images: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """HW float in [0, 1]: the share of ``images`` (HWC uint8, one size) in which ``trigger.apply`` touched each pixel.

    A trigger at a fixed place gives a 0/1 mask; one at a random place, a
    spread of lower values (several images show where it may land).
    """
    if len(images) == 0:
        raise EftclipError("true_trigger_mask needs at least one image")
    masks = [trigger.apply(np.asarray(im, dtype=np.uint8), rng).mask for im in images]
    return np.mean(np.stack(masks).astype(np.float32), axis=0)
