"""Boxes of images cut out and resized for CLIP on the torch device, all at once.

The PIL path (:func:`eftclip.oracles.base.extract_crops`, then the model's
``preprocess_val`` on each crop) costs a few milliseconds of CPU per crop; a GPU
that names thousands of crops a second waits on it.  Here the images go to the
device once and every box of a batch is resampled by one
``torchvision.ops.roi_align`` call.

open_clip's validation transform is ``Resize(S)`` of the shorter side then
``CenterCrop(S)``: for a box that is the centred square of side
``min(w, h)``, resized to ``S x S``.  roi_align samples that square bilinearly,
averaging ``ceil(side / S)`` samples per output pixel in each direction, which
antialiases a shrink much as PIL's bicubic filter does; the last bits differ
from PIL's, so the device path is a setting (``device_crops``), on by default
only on CUDA devices.

Images: ``HWC uint8 RGB`` numpy in, ``(B, 3, H, W)`` float in [0, 1] on the
device.  Boxes: ``XYXY pixels``.  Crops out: ``(N, 3, S, S)`` normalised with
the model's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from eftclip.errors import EftclipError


@dataclass(frozen=True)
class ClipInput:
    """What a CLIP's validation transform does, as numbers: the side ``size`` and the ``mean``/``std`` (RGB)."""

    size: int  # S: the square side the model takes, in pixels
    mean: tuple[float, float, float]  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, float, float]  # per-channel std divided by


def clip_input(preprocess: Any) -> ClipInput | None:
    """The :class:`ClipInput` of an open_clip validation transform, or None when it is not
    ``Resize(S) + CenterCrop(S) + ToTensor + Normalize`` (then only the PIL path reproduces it)."""
    transforms = list(getattr(preprocess, "transforms", []))
    steps = [t for t in transforms if _step_name(t) not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor",
                                                            "_convert_to_rgb")]
    if [_step_name(t) for t in steps] != ["Resize", "CenterCrop", "Normalize"]:
        return None
    if any(getattr(t, "mode", None) not in (None, "RGB") for t in transforms if _step_name(t) == "MaybeConvertMode"):
        return None
    resize, crop, norm = steps
    side = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    crop_hw = tuple(crop.size) if not isinstance(crop.size, int) else (crop.size, crop.size)
    if side is None or crop_hw != (side, side):
        return None
    return ClipInput(int(side), tuple(float(v) for v in norm.mean), tuple(float(v) for v in norm.std))


def _step_name(t: Any) -> str:
    # open_clip writes some steps as plain functions (_convert_to_rgb), others as transform objects
    return getattr(t, "__name__", type(t).__name__)


def wants_device_crops(setting: bool | None, device: str | torch.device) -> bool:
    """``device_crops`` resolved: None means on for CUDA devices only."""
    return torch.device(device).type == "cuda" if setting is None else bool(setting)


def upload(images: Sequence[np.ndarray], device: str | torch.device) -> torch.Tensor:
    """HWC uint8 RGB images as one ``(B, 3, Hmax, Wmax)`` float tensor in [0, 1] on ``device``.

    Each image sits at the top left; its last row and column are repeated into the rest, so that
    a bilinear sample past its edge reads the edge, as roi_align does at a tensor's own border."""
    if not images:
        raise EftclipError("no images to upload")
    hmax, wmax = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    out = torch.zeros((len(images), 3, hmax, wmax), dtype=torch.uint8, device=device)
    for b, im in enumerate(images):
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise EftclipError(f"image {b}: expected HWC uint8 RGB, got {im.dtype} of shape {im.shape}")
        t = torch.from_numpy(np.require(im, requirements=["C", "W"])).to(device, non_blocking=True)
        h, w = im.shape[:2]
        out[b, :, :h, :w] = t.permute(2, 0, 1)
        out[b, :, h:, :w] = out[b, :, h - 1 : h, :w]
        out[b, :, :, w:] = out[b, :, :, w - 1 : w]
    return out.float().div_(255.0)


def pixel_bounds(boxes: torch.Tensor, w: int, h: int, *, pad: float = 0.0, min_side: int = 1) -> torch.Tensor:
    """Whole-pixel crop bounds ``(N, 4)`` XYXY of boxes ``(N, 4)`` in a ``w x h`` image: the rule of
    :func:`eftclip.oracles.base.extract_crops` (grow by ``pad``, floor/ceil, clamp, at least ``min_side``)."""
    b = boxes.double()  # floor/ceil as extract_crops does them, in float64: 10.00000001 ends at 11
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    x1 = (b[:, 0] - pad * bw).clamp_min(0.0).floor().clamp_max(w - 1)
    y1 = (b[:, 1] - pad * bh).clamp_min(0.0).floor().clamp_max(h - 1)
    x2 = (b[:, 2] + pad * bw).clamp_max(float(w)).ceil()
    y2 = (b[:, 3] + pad * bh).clamp_max(float(h)).ceil()
    x1, x2 = _at_least(x1, x2, min_side, w)
    y1, y2 = _at_least(y1, y2, min_side, h)
    return torch.stack([x1, y1, x2, y2], dim=1)


def _at_least(lo: torch.Tensor, hi: torch.Tensor, side: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` with spans under ``side`` grown to it inside ``[0, limit]``."""
    short = hi - lo < side
    new_hi = torch.where(short, (lo + side).clamp_max(float(limit)), hi)
    new_lo = torch.where(short, (new_hi - side).clamp_min(0.0), lo)
    return new_lo, new_hi


def centred_squares(bounds: torch.Tensor) -> torch.Tensor:
    """The centred square of side ``min(w, h)`` of each XYXY box ``(N, 4)``: what Resize + CenterCrop keep."""
    x1, y1, x2, y2 = bounds.unbind(1)
    side = torch.minimum(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)


def resize_boxes(
    images: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    spec: ClipInput,
    *,
    masks: Sequence[torch.Tensor | None] | None = None,
    fill: float = 0.0,
) -> torch.Tensor:
    """CLIP inputs ``(N, 3, S, S)`` (normalised) for the XYXY pixel ``boxes`` of each image.

    ``images``: ``(B, 3, H, W)`` float in [0, 1] (:func:`upload`); ``boxes``: per image a ``(Ni, 4)``
    tensor of whole-pixel bounds (:func:`pixel_bounds`), on any device, ``N = sum(Ni)``, in image order.
    ``masks``: per image None or ``(Ni, H_i, W_i)`` bool at that image's resolution; each mask is
    resampled beside its crop, and output pixels where it falls under one half are set to ``fill``
    (in [0, 1]): the crop's own pixels are not blended with ``fill`` as a PIL crop of a masked image is.
    """
    from torchvision.ops import roi_align

    _check_boxes(images, boxes, masks)
    squares = [centred_squares(b.double()).float() for b in boxes]
    # one (N, 5) table of (image index, square) sent in one copy, not one copy per image
    rois = torch.cat([torch.cat([sq.new_full((len(sq), 1), float(i)), sq], 1) for i, sq in enumerate(squares)])
    size = (spec.size, spec.size)
    crops = roi_align(images, rois.to(images.device, images.dtype, non_blocking=True), size, spatial_scale=1.0,
                      sampling_ratio=-1, aligned=True)
    if masks is not None:
        crops = _masked(crops, squares, masks, size, fill)
    mean = torch.tensor(spec.mean, dtype=crops.dtype).view(1, 3, 1, 1).to(crops.device, non_blocking=True)
    std = torch.tensor(spec.std, dtype=crops.dtype).view(1, 3, 1, 1).to(crops.device, non_blocking=True)
    return (crops - mean) / std


def _check_boxes(images: torch.Tensor, boxes: Sequence[torch.Tensor], masks) -> None:
    if len(boxes) != images.shape[0]:
        raise EftclipError(f"{len(boxes)} box lists for {images.shape[0]} images")
    if masks is not None and len(masks) != len(boxes):
        raise EftclipError(f"{len(masks)} mask lists for {len(boxes)} box lists")
    for i, b in enumerate(boxes):
        if b.ndim != 2 or b.shape[1] != 4:
            raise EftclipError(f"image {i}: boxes must be (N, 4) XYXY, got shape {tuple(b.shape)}")
        if masks is not None and masks[i] is not None and masks[i].shape[0] != b.shape[0]:
            raise EftclipError(f"image {i}: {masks[i].shape[0]} masks for {b.shape[0]} boxes")


def _masked(crops: torch.Tensor, squares: list[torch.Tensor], masks: Sequence[torch.Tensor | None],
            size: tuple[int, int], fill: float) -> torch.Tensor:
    from torchvision.ops import roi_align

    keep = []
    for sq, m in zip(squares, masks):
        if m is None:
            keep.append(torch.ones((len(sq), 1, *size), device=crops.device))
            continue
        # each mask is its own one-channel "image": box k reads plane k
        idx = torch.arange(len(sq), dtype=sq.dtype, device=sq.device)[:, None]
        planes = m.to(crops.device, crops.dtype)[:, None]
        rois = torch.cat([idx, sq], 1).to(crops.device, crops.dtype, non_blocking=True)
        keep.append(roi_align(planes, rois, size, 1.0, -1, True) >= 0.5)
    inside = torch.cat(keep).to(crops.dtype)
    return crops * inside + fill * (1 - inside)
