"""The oracle protocol and the helpers every backend shares.

An oracle answers "where in this picture is each of these things, and how sure
are you?".  Images are ``np.ndarray`` **HWC uint8 RGB**, boxes **XYXY pixels**
(floats, in the image's own pixel grid), masks **HW bool**, scores in [0, 1].

Backends return everything they find for the prompts with its confidence;
thresholding at the detection's theta is the caller's job.  A ``min_score``
pre-filter only keeps result lists short.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from eftclip.errors import EftclipError

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Found:
    """One thing an oracle found for one prompt."""

    label: str  # the prompt this answers (as the caller spelled it)
    score: float  # the oracle's confidence, in [0, 1]
    box_xyxy: Box  # XYXY pixels in the image's own grid, x1 <= x2, y1 <= y2
    mask: np.ndarray | None = field(default=None, compare=False)  # HW bool, or None (boxes only)


@dataclass(frozen=True)
class OracleResult:
    """All an oracle found in one image, and the prompts it cannot represent."""

    found: list[Found]  # any order; several entries per prompt are allowed
    unknown: list[str]  # prompts outside the oracle's vocabulary, never dropped silently

    def labels(self, theta: float = 0.0) -> set[str]:
        """Prompts with at least one finding scoring ``>= theta``."""
        return {f.label for f in self.found if f.score >= theta}

    def best(self, label: str) -> Found | None:
        """The highest-scoring finding for ``label``, or None."""
        hits = [f for f in self.found if f.label == label]
        return max(hits, key=lambda f: f.score) if hits else None


@runtime_checkable
class Oracle(Protocol):
    """What the detection stage calls."""

    def find(self, image: np.ndarray, prompts: Sequence[str]) -> OracleResult:
        """Find ``prompts`` in one HWC uint8 RGB image."""
        ...

    def find_batch(
        self, images: Sequence[np.ndarray], prompts_per_image: Sequence[Sequence[str]]
    ) -> list[OracleResult]:
        """Find per-image prompt lists in a batch of images (one result per image, same order)."""
        ...


class BaseOracle:
    """Validation and a per-image ``find_batch`` loop for backends that cannot batch.

    Subclasses implement ``_find_batch(images, prompts_per_image)`` on already
    checked input (lists of HWC uint8 RGB arrays, lists of unique non-empty prompts).
    """

    name: str = "oracle"

    def __init__(self, *, min_score: float = 0.0):
        if not 0.0 <= float(min_score) <= 1.0:
            raise EftclipError(f"{self.name}: min_score must lie in [0, 1], got {min_score!r}")
        self.min_score = float(min_score)

    def find(self, image: np.ndarray, prompts: Sequence[str]) -> OracleResult:
        return self.find_batch([image], [prompts])[0]

    def find_batch(
        self, images: Sequence[np.ndarray], prompts_per_image: Sequence[Sequence[str]]
    ) -> list[OracleResult]:
        images = list(images)
        prompts_per_image = list(prompts_per_image)
        if len(images) != len(prompts_per_image):
            raise EftclipError(
                f"{self.name}: find_batch got {len(images)} images but "
                f"{len(prompts_per_image)} prompt lists"
            )
        images = [check_image(im, f"{self.name}: image {i}") for i, im in enumerate(images)]
        prompts_per_image = [
            check_prompts(p, f"{self.name}: image {i}") for i, p in enumerate(prompts_per_image)
        ]
        if not images:
            return []
        return self._find_batch(images, prompts_per_image)

    def _find_batch(self, images: list[np.ndarray], prompts_per_image: list[list[str]]) -> list[OracleResult]:
        return [self._find_one(im, p) for im, p in zip(images, prompts_per_image)]

    def _find_one(self, image: np.ndarray, prompts: list[str]) -> OracleResult:  # pragma: no cover
        raise NotImplementedError


# ----------------------------------------------------------------------------- input checks


def check_image(image: np.ndarray, where: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous HWC uint8 RGB array, or raise EftclipError.

    A HW grey image is expanded to three channels; an alpha channel is dropped.
    """
    if not isinstance(image, np.ndarray):
        raise EftclipError(f"{where}: expected a numpy HWC uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise EftclipError(f"{where}: expected dtype uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise EftclipError(f"{where}: expected shape (H, W, 3), got {tuple(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise EftclipError(f"{where}: empty image of shape {tuple(image.shape)}")
    return np.ascontiguousarray(image[:, :, :3])


def check_prompts(prompts: Sequence[str], where: str = "prompts") -> list[str]:
    """Unique, stripped, non-empty prompts in their given order; EftclipError when none."""
    if isinstance(prompts, str):
        raise EftclipError(f"{where}: prompts must be a list of strings, got the string {prompts!r}")
    out: list[str] = []
    for p in prompts:
        if not isinstance(p, str):
            raise EftclipError(f"{where}: prompt {p!r} is not a string")
        p = p.strip()
        if not p:
            raise EftclipError(f"{where}: empty prompt string")
        if p not in out:
            out.append(p)
    if not out:
        raise EftclipError(f"{where}: no prompts given (an oracle needs at least one thing to look for)")
    return out


# ----------------------------------------------------------------------------- boxes and masks


def clip_box(box: Sequence[float], width: int, height: int) -> Box:
    """Clamp an XYXY pixel box into ``[0, width] x [0, height]`` and order its corners."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return (x1, y1, x2, y2)


def mask_to_box(mask: np.ndarray) -> Box | None:
    """Tight XYXY pixel box around a HW bool mask (pixel edges, so a 1-pixel mask is 1 wide)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of XYXY boxes ``(N, 4)`` -> ``(N,)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of XYXY boxes ``(N, 4)`` and ``(M, 4)`` -> ``(N, M)`` in [0, 1]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best score first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def extract_crops(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]],
    *,
    masks: Sequence[np.ndarray | None] | None = None,
    pad: float = 0.0,
    fill: int = 0,
    min_side: int = 1,
) -> list[np.ndarray]:
    """Cut each XYXY pixel box out of a HWC uint8 image.

    ``pad`` grows each box by that fraction of its size on every side (context
    helps a classifier); boxes are clamped to the image and at least ``min_side``
    pixels wide and high.  With ``masks`` (HW bool, full-image size) the pixels
    outside a region's mask are set to ``fill``.  Returns HWC uint8 crops.
    """
    h, w = image.shape[:2]
    crops = []
    for k, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) for v in box)
        bw, bh = x2 - x1, y2 - y1
        x1, x2 = x1 - pad * bw, x2 + pad * bw
        y1, y2 = y1 - pad * bh, y2 + pad * bh
        ix1, iy1 = int(np.floor(max(0.0, x1))), int(np.floor(max(0.0, y1)))
        ix2, iy2 = int(np.ceil(min(float(w), x2))), int(np.ceil(min(float(h), y2)))
        ix1, iy1 = min(ix1, w - 1), min(iy1, h - 1)
        if ix2 - ix1 < min_side:
            ix2 = min(w, ix1 + min_side)
            ix1 = max(0, ix2 - min_side)
        if iy2 - iy1 < min_side:
            iy2 = min(h, iy1 + min_side)
            iy1 = max(0, iy2 - min_side)
        crop = image[iy1:iy2, ix1:ix2].copy()
        mask = masks[k] if masks is not None else None
        if mask is not None:
            crop[~mask[iy1:iy2, ix1:ix2]] = fill
        crops.append(crop)
    return crops


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Scale XYXY boxes ``(N, 4)`` by ``sx`` along x and ``sy`` along y."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] *= sx
    boxes[:, [1, 3]] *= sy
    return boxes


def chunks(seq: Sequence, size: int):
    """Consecutive slices of ``seq`` of at most ``size`` items."""
    for i in range(0, len(seq), max(1, int(size))):
        yield seq[i : i + size]
