"""FastSAM's pre- and post-processing as batched tensor work on the device.

ultralytics' predictor letterboxes each image with OpenCV on the CPU, and the
oracle then copied every full-resolution mask to the host to cut crops: on a
GPU the network idles most of the time.  :class:`DeviceSegmenter` does the same
steps on the images' device:

1. letterbox: each image resized (bilinear, rounded to whole grey levels as
   OpenCV's uint8 resize is) into an ``imgsz`` square, centred, padded with
   grey 114, the geometry of ultralytics' ``LetterBox``;
2. the network (fused, eval mode), under the caller's autocast;
3. ultralytics' own NMS, box rescaling and native-resolution mask assembly
   (``nms.non_max_suppression``, ``ops.scale_boxes``, ``ops.process_mask_native``),
   then FastSAM's border rule (boxes within 20 px of a border snap to it; a box
   covering 90% of the image becomes the whole image), as tensor operations.

Its results equal the predictor's for images already ``imgsz`` square (tested);
for others the letterbox differs from OpenCV's in a few grey levels.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F

PAD_GREY = 114  # ultralytics' letterbox padding value


def letterbox_geometry(h: int, w: int, side: int) -> tuple[float, int, int, int, int]:
    """``(ratio, new_h, new_w, top, left)`` of a centred letterbox of an ``h x w`` image into ``side x side``."""
    r = min(side / h, side / w)
    nh, nw = max(round(h * r), 1), max(round(w * r), 1)
    return r, nh, nw, round((side - nh) / 2 - 0.1), round((side - nw) / 2 - 0.1)


def letterbox(images: torch.Tensor, sizes: Sequence[tuple[int, int]], side: int) -> torch.Tensor:
    """``(B, 3, side, side)`` float in [0, 1] from ``images`` ``(B, 3, Hmax, Wmax)`` in [0, 1] whose
    image ``b`` fills the top-left ``sizes[b] = (h, w)``."""
    out = torch.full((len(sizes), 3, side, side), PAD_GREY / 255.0, device=images.device, dtype=images.dtype)
    for b, (h, w) in enumerate(sizes):
        _, nh, nw, top, left = letterbox_geometry(h, w, side)
        im = images[b : b + 1, :, :h, :w]
        if (nh, nw) != (h, w):
            im = F.interpolate(im * 255.0, size=(nh, nw), mode="bilinear", align_corners=False)
            im = im.round_().clamp_(0, 255).div_(255.0)
        out[b, :, top : top + nh, left : left + nw] = im[0]
    return out


BORDER_PX = 20  # FastSAM's rule: a box edge this close to the image border snaps to it
WHOLE_IOU = 0.9  # and a box covering more than this share of the image becomes the whole image


class DeviceSegmenter:
    """FastSAM on tensors: ``(B, 3, Hmax, Wmax)`` images in [0, 1] in, per image
    ``(boxes (N, 4) XYXY pixels float, conf (N,), masks (N, h, w) bool or None)`` out, all on the device."""

    def __init__(self, net: torch.nn.Module, *, imgsz: int, conf: float, iou: float, max_det: int,
                 device: str | torch.device):
        self.net_device = torch.device(device)
        self.net = copy.deepcopy(net).to(self.net_device).eval()
        if hasattr(self.net, "fuse"):
            self.net = self.net.fuse(verbose=False)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.imgsz, self.conf, self.iou, self.max_det = int(imgsz), float(conf), float(iou), int(max_det)
        self.classes = len(getattr(net, "names", {0: "object"}))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]], *, min_area: float = 0.0,
                 masks: bool = True) -> list[tuple[Any, Any, Any]]:
        """``min_area``: drop boxes smaller than this share of their image; ``masks``: return them (else None)."""
        from ultralytics.utils import nms

        x = letterbox(images, sizes, self.imgsz)
        preds, protos = self._forward(x)
        kept = nms.non_max_suppression(preds, self.conf, self.iou, max_det=self.max_det, nc=self.classes)
        # post-processing in float32 whatever the caller's autocast: mask logits are thresholded at zero
        with torch.autocast(self.net_device.type, enabled=False):
            return [self._one(det, proto, hw, min_area, masks) for det, proto, hw in zip(kept, protos, sizes)]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        head = out[0] if isinstance(out[0], (tuple, list)) else out  # eval mode: ((preds, protos), extras)
        return head[0].float(), head[1]

    def _one(self, det: torch.Tensor, proto: torch.Tensor, hw: tuple[int, int], min_area: float, want_masks: bool):
        from ultralytics.utils import ops

        h, w = hw
        boxes = ops.scale_boxes((self.imgsz, self.imgsz), det[:, :4].clone(), (h, w))  # clipped to the image
        masks = ops.process_mask_native(proto.float(), det[:, 6:].float(), boxes, (h, w))
        has_pixels = masks.flatten(1).amax(1) > 0  # a mask with no pixel left after the box crop is no region
        boxes = snap_to_border(boxes, h, w)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = has_pixels & (area >= min_area * h * w)  # one boolean index (one sync) per image
        return boxes[keep], det[keep, 4], masks[keep].bool() if want_masks else None


def snap_to_border(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """FastSAM's border rule on XYXY boxes ``(N, 4)`` inside an ``h x w`` image, without a host sync:
    edges within ``BORDER_PX`` of the border move onto it, and a box whose IoU with the whole image
    (its area over the image's, as it lies inside) exceeds ``WHOLE_IOU`` becomes the whole image."""
    x1, y1, x2, y2 = boxes.unbind(1)
    x1 = torch.where(x1 < BORDER_PX, torch.zeros_like(x1), x1)
    y1 = torch.where(y1 < BORDER_PX, torch.zeros_like(y1), y1)
    x2 = torch.where(x2 > w - BORDER_PX, torch.full_like(x2, w), x2)
    y2 = torch.where(y2 > h - BORDER_PX, torch.full_like(y2, h), y2)
    snapped = torch.stack([x1, y1, x2, y2], 1)
    whole = ((x2 - x1) * (y2 - y1) / (h * w) > WHOLE_IOU)[:, None]
    image_box = torch.zeros_like(snapped)
    image_box[:, 2], image_box[:, 3] = w, h
    return torch.where(whole, image_box, snapped)
