"""OWLv2 open-vocabulary detection as an oracle (transformers, extra ``hf``)."""

from __future__ import annotations

import os

import numpy as np

from eftclip.errors import EftclipError
from eftclip.oracles._hf import import_transformers, load_pretrained, model_source
from eftclip.oracles.base import BaseOracle, Found, OracleResult, chunks, clip_box


class Owlv2Oracle(BaseOracle):
    """``Owlv2ForObjectDetection`` + ``Owlv2Processor`` from a local folder or the hub.

    ``model_path``: a ``save_pretrained`` folder holding both, or a hub id such as
    ``google/owlv2-base-patch16-ensemble`` (through the hub cache; see
    :mod:`eftclip.oracles._hf` for the offline rule).  ``query_template``:
    how a prompt becomes a text query (one ``{}``).  ``min_score``: the
    post-processing threshold (theta is the caller's).  ``batch_size``: images
    per forward pass.  ``sam_path``: a SAM folder or hub id; when given, each box is
    refined into a mask (see :class:`~eftclip.oracles.sam.SamRefiner`).

    Scores and boxes come from ``post_process_grounded_object_detection``: each
    predicted box gets its best-matching query and that query's sigmoid score;
    boxes are XYXY pixels, clamped to the image (OWLv2 pads images to a square
    at the bottom/right, so boxes are scaled to the padded square first).
    """

    name = "owlv2"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        query_template: str = "a photo of a {}",
        min_score: float = 0.05,
        batch_size: int = 8,
        sam_path: str | os.PathLike | None = None,
        device: str = "cpu",
    ):
        super().__init__(min_score=min_score)
        tf = import_transformers("the OWLv2 oracle")
        folder = model_source(model_path, "OWLv2")
        if query_template.count("{}") != 1:
            raise EftclipError(f"query_template must contain one '{{}}', got {query_template!r}")
        self.processor = load_pretrained(tf.Owlv2Processor, folder, "OWLv2 processor")
        self.model = load_pretrained(tf.Owlv2ForObjectDetection, folder, "OWLv2 model").eval().to(device)
        self.device = device
        self.query_template = query_template
        self.batch_size = int(batch_size)
        self.sam = None
        if sam_path is not None:
            from eftclip.oracles.sam import SamRefiner

            self.sam = SamRefiner(sam_path, device=device)

    def _find_batch(self, images: list[np.ndarray], prompts_per_image: list[list[str]]) -> list[OracleResult]:
        import torch

        results: list[OracleResult] = []
        for idx in chunks(list(range(len(images))), self.batch_size):
            ims = [images[i] for i in idx]
            prompts = [prompts_per_image[i] for i in idx]
            most = max(len(p) for p in prompts)
            # pad each image's queries with copies of its first prompt (never a foreign one),
            # so a padded query can only ever win as that same prompt
            queries = [[self.query_template.format(q) for q in p + [p[0]] * (most - len(p))] for p in prompts]
            # CHW uint8 tensors already on the device: transformers' torchvision image processor then
            # resizes and pads there (device=...), not image by image on the host
            pixels = [torch.from_numpy(np.require(im, requirements=["C", "W"])).to(self.device).permute(2, 0, 1)
                      for im in ims]
            inputs = self.processor(text=queries, images=pixels, return_tensors="pt", device=self.device)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.no_grad():
                outputs = self.model(**inputs)
            sides = [max(im.shape[:2]) for im in ims]
            post = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.min_score, target_sizes=[(s, s) for s in sides]
            )
            for im, p, det in zip(ims, prompts, post):
                h, w = im.shape[:2]
                boxes = [clip_box(b, w, h) for b in det["boxes"].float().cpu().tolist()]
                labels = [p[int(k)] if int(k) < len(p) else p[0] for k in det["labels"].cpu().tolist()]
                scores = det["scores"].float().cpu().clamp(0, 1).tolist()
                masks = self.sam.refine(im, boxes) if self.sam is not None and boxes else [None] * len(boxes)
                found = [Found(lab, float(s), b, m) for lab, s, b, m in zip(labels, scores, boxes, masks)]
                results.append(OracleResult(found=found, unknown=[]))
        return results
