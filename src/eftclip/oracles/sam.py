"""SAM refinement of boxes into masks (transformers ``SamModel``, extra ``hf``)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from eftclip.oracles._hf import import_transformers, load_pretrained, model_source


class SamRefiner:
    """Turn XYXY pixel boxes into HW bool masks with a local SAM checkpoint.

    ``sam_path``: a folder (or a hub id such as ``facebook/sam-vit-base``) holding a ``SamModel`` and its ``SamProcessor``
    (``save_pretrained``).  ``device``: where SAM runs.  ``mask_threshold``:
    logit threshold for binarising the upscaled masks.
    """

    def __init__(self, sam_path: str | os.PathLike, *, device: str = "cpu", mask_threshold: float = 0.0):
        tf = import_transformers("SAM mask refinement")
        folder = model_source(sam_path, "SAM")
        self.processor = load_pretrained(tf.SamProcessor, folder, "SAM processor")
        self.model = load_pretrained(tf.SamModel, folder, "SAM model").eval().to(device)
        self.device = device
        self.mask_threshold = float(mask_threshold)

    def refine(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """Masks (HW bool, the image's size) for ``boxes`` (XYXY pixels) in one HWC uint8 image."""
        import torch
        from PIL import Image

        if len(boxes) == 0:
            return []
        h, w = image.shape[:2]
        inputs = self.processor(
            images=Image.fromarray(image),
            input_boxes=[[[float(v) for v in b] for b in boxes]],
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model(
                pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
            )
        masks = self.processor.post_process_masks(
            [out.pred_masks[0].float().cpu()],
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
            mask_threshold=self.mask_threshold,
        )[0]
        # (num_boxes, 1, H, W) bool
        masks = masks.reshape(len(boxes), -1, h, w)[:, 0].numpy().astype(bool)
        return [m for m in masks]
