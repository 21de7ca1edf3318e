"""Grounding DINO open-vocabulary detection as an oracle (transformers, extra ``hf``)."""

from __future__ import annotations

import os

import numpy as np

from eftclip.oracles._hf import import_transformers, load_pretrained, model_source
from eftclip.oracles.base import BaseOracle, Found, OracleResult, chunks, clip_box


class GroundingDinoOracle(BaseOracle):
    """``GroundingDinoForObjectDetection`` + ``AutoProcessor`` from a local folder or the hub.

    ``model_path``: a ``save_pretrained`` folder (or a hub id such as
    ``IDEA-Research/grounding-dino-tiny``, through the hub cache) holding model, image processor and
    tokenizer.  ``min_score``: the box threshold of the post-processing (theta is
    the caller's).  ``batch_size``: images per forward pass.  ``sam_path``: a
    SAM folder or hub id for mask refinement.

    The prompts of an image are joined into Grounding DINO's caption
    ("dog. red car."); a box's score is the post-processing's (its best token's
    sigmoid), and its label is the prompt whose tokens hold that best token.
    Boxes are XYXY pixels clamped to the image.
    """

    name = "grounding-dino"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        min_score: float = 0.05,
        batch_size: int = 4,
        sam_path: str | os.PathLike | None = None,
        device: str = "cpu",
    ):
        super().__init__(min_score=min_score)
        tf = import_transformers("the Grounding DINO oracle")
        folder = model_source(model_path, "Grounding DINO")
        self.processor = load_pretrained(tf.AutoProcessor, folder, "Grounding DINO processor")
        self.model = load_pretrained(tf.GroundingDinoForObjectDetection, folder, "Grounding DINO model").eval().to(device)
        self.device = device
        self.batch_size = int(batch_size)
        self.sam = None
        if sam_path is not None:
            from eftclip.oracles.sam import SamRefiner

            self.sam = SamRefiner(sam_path, device=device)

    @staticmethod
    def caption(prompts: list[str]) -> tuple[str, list[tuple[int, int]]]:
        """Grounding DINO's caption for ``prompts`` and each prompt's character span in it."""
        text, spans = "", []
        for p in prompts:
            phrase = " ".join(p.lower().replace(".", " ").split())
            spans.append((len(text), len(text) + len(phrase)))
            text += phrase + ". "
        return text.strip(), spans

    def _token_owner(self, text: str, spans: list[tuple[int, int]], n_tokens: int) -> np.ndarray:
        # which prompt each token belongs to (-1: none), from the tokenizer's offsets
        enc = self.processor.tokenizer(text, return_offsets_mapping=True)
        owner = np.full(n_tokens, -1, dtype=np.int64)
        for t, (a, b) in enumerate(enc["offset_mapping"][:n_tokens]):
            if b <= a:
                continue
            for j, (s, e) in enumerate(spans):
                if a >= s and b <= e:
                    owner[t] = j
                    break
        return owner

    def _find_batch(self, images: list[np.ndarray], prompts_per_image: list[list[str]]) -> list[OracleResult]:
        import torch
        from PIL import Image

        results: list[OracleResult] = []
        for idx in chunks(list(range(len(images))), self.batch_size):
            ims = [images[i] for i in idx]
            prompts = [prompts_per_image[i] for i in idx]
            caps = [self.caption(p) for p in prompts]
            inputs = self.processor(
                images=[Image.fromarray(im) for im in ims], text=[c[0] for c in caps], padding=True, return_tensors="pt"
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.no_grad():
                outputs = self.model(**inputs)
            sizes = [im.shape[:2] for im in ims]
            post = self.processor.post_process_grounded_object_detection(
                outputs, input_ids=inputs["input_ids"], threshold=self.min_score, text_threshold=0.0, target_sizes=sizes
            )
            # the same ops on the same tensor as the post-processing, so `keep` below selects
            # exactly the queries it kept, in the same order
            probs = torch.sigmoid(outputs.logits)  # (B, queries, max_text_len)
            query_scores = torch.max(probs, dim=-1)[0].cpu()
            probs = probs.float().cpu()
            for b, (im, p, (text, spans), det) in enumerate(zip(ims, prompts, caps, post)):
                h, w = im.shape[:2]
                keep = torch.nonzero(query_scores[b] > self.min_score).flatten()
                owner = self._token_owner(text, spans, probs.shape[-1])
                boxes = [clip_box(x, w, h) for x in det["boxes"].float().cpu().tolist()]
                scores = det["scores"].float().cpu().clamp(0, 1).tolist()
                if len(keep) != len(boxes):  # would mean the post-processing changed under us
                    raise RuntimeError("Grounding DINO post-processing kept a different set of queries")
                found_boxes, found = [], []
                for q, box, s in zip(keep.tolist(), boxes, scores):
                    tok = probs[b, q].clone()
                    tok[torch.from_numpy(owner < 0)] = -1.0  # special and separator tokens name nothing
                    j = int(owner[int(tok.argmax())]) if float(tok.max()) >= 0 else -1
                    if j < 0:
                        continue
                    found_boxes.append(box)
                    found.append((p[j], float(s), box))
                masks = self.sam.refine(im, found_boxes) if self.sam is not None and found_boxes else [None] * len(found)
                results.append(OracleResult([Found(l, s, bx, m) for (l, s, bx), m in zip(found, masks)], unknown=[]))
        return results
