"""Pass 1's model work: the suspect CLIP as a ranker of labels, and one batch examined by CLIP and the oracle.

A pass-1 record (one per image, a JSON line of ``images.jsonl``): ``key``,
``index``, ``image`` (its reference), ``is_poisoned``, ``clip`` (CLIP's top
``prompt_tau`` ``[label, probability]``, best first), ``finds`` (every find of
the oracle: ``label``, ``score`` in [0, 1], ``box`` XYXY pixels, ``crop`` =
CLIP's top ``[label, probability]`` for that box's crop) and ``unknown`` (the
prompts the oracle cannot represent).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from eftclip.detection.sources import ImageItem


class ClipScorer:
    """The poisoned CLIP as a ranker of vocabulary labels, for whole images and for crops."""

    def __init__(self, bundle, vocab: Sequence[str], templates: Sequence[str], device: str, batch_size: int):
        import torch

        from eftclip.evaluation.zeroshot import text_classifier

        # crops are small and many: score them in larger batches than whole images
        self.bundle, self.vocab, self.device = bundle, list(vocab), device
        self.batch_size = max(int(batch_size), 64)
        with torch.no_grad():
            self.classifier = text_classifier(bundle, self.vocab, list(templates), device)  # (C, D)
            scale = getattr(bundle.model, "logit_scale", None)
            self.scale = float(scale.exp()) if scale is not None else 100.0

    def rank(self, images: Sequence[Any], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(label, probability)`` per PIL image, best first (probabilities over the vocabulary)."""
        import torch

        from eftclip.evaluation.zeroshot import image_features

        if not images:
            return []
        with torch.no_grad():
            feats = image_features(self.bundle, list(images), self.device, self.batch_size)  # (N, D)
            probs = (self.scale * feats.to(self.classifier) @ self.classifier.T).softmax(dim=-1)
            top = probs.topk(min(k, len(self.vocab)), dim=-1)
        vals, idx = top.values.cpu().tolist(), top.indices.cpu().tolist()
        return [[(self.vocab[j], round(float(v), 6)) for v, j in zip(vs, js)] for vs, js in zip(vals, idx)]


def examine_batch(
    batch: Sequence[tuple[int, ImageItem, Any]],
    scorer: ClipScorer,
    oracle,
    prompt_tau: int,
    crop_pad: float = 0.0,
) -> list[dict]:
    """Pass-1 records for a batch of ``(index, item, PIL image)``: CLIP's list, the oracle's finds, crop labels."""
    from PIL import Image

    from eftclip.oracles.base import extract_crops

    pils = [im for _, _, im in batch]
    arrays = [np.asarray(im, dtype=np.uint8) for im in pils]
    ranked = scorer.rank(pils, prompt_tau)
    results = oracle.find_batch(arrays, [[lab for lab, _ in r] for r in ranked])
    # an oracle often returns the same region for several prompts: crop and score each box once
    crops, owners = [], []
    for b, (arr, res) in enumerate(zip(arrays, results)):
        boxes = list(dict.fromkeys(tuple(f.box_xyxy) for f in res.found))
        for box, crop in zip(boxes, extract_crops(arr, boxes, pad=crop_pad, min_side=2)):
            crops.append(Image.fromarray(crop))
            owners.append((b, box))
    crop_labels = scorer.rank(crops, 1) if crops else []
    by_box = {o: [list(x) for x in lab] for o, lab in zip(owners, crop_labels)}
    per_find = {
        (b, j): by_box[(b, tuple(f.box_xyxy))] for b, res in enumerate(results) for j, f in enumerate(res.found)
    }
    records = []
    for b, ((index, item, _), r, res) in enumerate(zip(batch, ranked, results)):
        finds = [
            {
                "label": f.label,
                "score": round(float(f.score), 6),
                "box": [round(float(v), 2) for v in f.box_xyxy],
                "crop": per_find.get((b, j), []),
            }
            for j, f in enumerate(res.found)
        ]
        records.append(
            {
                "key": item.key,
                "index": index,
                "image": item.ref,
                "is_poisoned": item.is_poisoned,
                "clip": [list(x) for x in r],
                "finds": finds,
                "unknown": list(res.unknown),
            }
        )
    return records

