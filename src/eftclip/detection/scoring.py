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
    """The poisoned CLIP as a ranker of vocabulary labels, for whole images and for crops.

    ``device_crops``: resize images and cut crops on ``device``
    (:mod:`eftclip.oracles.device_crops`) instead of through PIL; None: on CUDA only.
    """

    def __init__(self, bundle, vocab: Sequence[str], templates: Sequence[str], device: str, batch_size: int,
                 device_crops: bool | None = None):
        import torch

        from eftclip.evaluation.zeroshot import text_classifier

        # crops are small and many: score them in larger batches than whole images
        self.bundle, self.vocab, self.device = bundle, list(vocab), device
        self.batch_size = max(int(batch_size), 64)
        self.spec = _device_spec(bundle, device, device_crops)
        with torch.no_grad():
            self.classifier = text_classifier(bundle, self.vocab, list(templates), device)  # (C, D)
            scale = getattr(bundle.model, "logit_scale", None)
            self.scale = float(scale.exp()) if scale is not None else 100.0

    def rank(self, images: Sequence[Any], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(label, probability)`` per PIL image, best first (probabilities over the vocabulary)."""
        from eftclip.evaluation.zeroshot import image_features

        if not images:
            return []
        return self._top(image_features(self.bundle, list(images), self.device, self.batch_size), k)

    def upload(self, arrays: Sequence[np.ndarray]):
        """The batch's HWC uint8 images on the device (``(B, 3, Hmax, Wmax)`` in [0, 1]), or None on the PIL path."""
        from eftclip.oracles.device_crops import upload

        return upload(arrays, self.device) if self.spec is not None and arrays else None

    def rank_images(self, pils: Sequence[Any], on_device, k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` per whole PIL image: through PIL, or from the uploaded batch (``on_device``, see
        :meth:`upload`), where Resize + CenterCrop of every image is one roi_align."""
        if on_device is None:
            return self.rank(pils, k)
        import torch

        return self.rank_boxes(on_device, [torch.tensor([[0.0, 0.0, im.width, im.height]]) for im in pils], k)

    def rank_boxes(self, on_device, boxes: Sequence[Any], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` per crop, from the uploaded batch: ``boxes`` holds per image a ``(Ni, 4)`` tensor of
        whole-pixel XYXY bounds (:func:`~eftclip.oracles.device_crops.pixel_bounds`); rows in image order."""
        from eftclip.evaluation.zeroshot import image_features
        from eftclip.oracles.device_crops import resize_boxes

        if not sum(len(b) for b in boxes):
            return []
        inputs = resize_boxes(on_device, boxes, self.spec)
        return self._top(image_features(self.bundle, inputs, self.device, self.batch_size), k)

    def _top(self, feats, k: int) -> list[list[tuple[str, float]]]:
        import torch

        with torch.no_grad():
            probs = (self.scale * feats.to(self.classifier) @ self.classifier.T).softmax(dim=-1)
            top = probs.topk(min(k, len(self.vocab)), dim=-1)
        vals, idx = top.values.cpu().tolist(), top.indices.cpu().tolist()
        return [[(self.vocab[j], round(float(v), 6)) for v, j in zip(vs, js)] for vs, js in zip(vals, idx)]


def build_models(cfg: Any, vocab: Sequence[str], oracle=None, bundle=None) -> tuple[ClipScorer, Any]:
    """The CLIP scorer and the oracle of a detection or sweep config (``checkpoint``, ``oracle``,
    ``oracle_args``, ``device``, ``device_crops``, ``templates``, ``batch_size``), each built unless given.
    The oracle gets what the detection step adds (:func:`eftclip.oracles.detection_kwargs`); the user's
    ``oracle_args`` win."""
    if oracle is None:
        from eftclip.oracles import create_oracle, detection_kwargs

        added = detection_kwargs(cfg.oracle, cfg.device, cfg.device_crops)
        oracle = create_oracle(cfg.oracle, **{**added, **cfg.oracle_args})
    if bundle is None:
        from eftclip.models import load_checkpoint

        bundle = load_checkpoint(cfg.checkpoint, device=cfg.device)
    return ClipScorer(bundle, vocab, cfg.templates, cfg.device, cfg.batch_size, cfg.device_crops), oracle


def _device_spec(bundle, device: str, setting: bool | None):
    from eftclip.errors import EftclipError
    from eftclip.oracles.device_crops import clip_input, wants_device_crops

    if not wants_device_crops(setting, device):
        return None
    spec = clip_input(bundle.preprocess_val)
    if spec is None and setting:
        raise EftclipError("--device-crops: the suspect CLIP's transform is not Resize + CenterCrop + Normalize, "
                           "which only the PIL path reproduces; leave --device-crops unset")
    return spec


def _crop_labels(scorer: ClipScorer, arrays, on_device, boxes_per_image, crop_pad: float) -> list:
    """CLIP's top label per box, per image (lists of ``[[label, probability]]``)."""
    from PIL import Image

    from eftclip.oracles.base import extract_crops

    if on_device is not None:
        import torch

        from eftclip.oracles.device_crops import pixel_bounds

        bounds = [pixel_bounds(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), a.shape[1], a.shape[0],
                               pad=crop_pad, min_side=2) for a, boxes in zip(arrays, boxes_per_image)]
        flat = scorer.rank_boxes(on_device, bounds, 1)
    else:
        crops = [Image.fromarray(c) for a, boxes in zip(arrays, boxes_per_image)
                 for c in extract_crops(a, boxes, pad=crop_pad, min_side=2)]
        flat = scorer.rank(crops, 1) if crops else []
    out, start = [], 0
    for boxes in boxes_per_image:
        out.append([[list(x) for x in lab] for lab in flat[start : start + len(boxes)]])
        start += len(boxes)
    return out


def examine_batch(
    batch: Sequence[tuple[int, ImageItem, Any]],
    scorer: ClipScorer,
    oracle,
    prompt_tau: int,
    crop_pad: float = 0.0,
) -> list[dict]:
    """Pass-1 records for a batch of ``(index, item, PIL image)``: CLIP's list, the oracle's finds, crop labels."""
    pils = [im for _, _, im in batch]
    arrays = [np.asarray(im, dtype=np.uint8) for im in pils]
    on_device = scorer.upload(arrays)
    ranked = scorer.rank_images(pils, on_device, prompt_tau)
    results = oracle.find_batch(arrays, [[lab for lab, _ in r] for r in ranked])
    # an oracle often returns the same region for several prompts: crop and score each box once
    boxes = [list(dict.fromkeys(tuple(f.box_xyxy) for f in res.found)) for res in results]
    labels = _crop_labels(scorer, arrays, on_device, boxes, crop_pad)
    by_box = {(b, box): lab for b in range(len(boxes)) for box, lab in zip(boxes[b], labels[b])}
    records = []
    for b, ((index, item, _), r, res) in enumerate(zip(batch, ranked, results)):
        finds = [
            {
                "label": f.label,
                "score": round(float(f.score), 6),
                "box": [round(float(v), 2) for v in f.box_xyxy],
                "crop": by_box.get((b, tuple(f.box_xyxy)), []),
            }
            for f in res.found
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
