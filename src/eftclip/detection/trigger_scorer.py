"""How strongly a suspect CLIP pulls images to the trigger labels K: the scorer trigger recovery probes.

A *K-scorer* is any callable ``x -> margin``: ``x`` is a float tensor
``(B, 3, H, W)`` of RGB values in [0, 1] at the images' own resolution, the
result a ``(B,)`` tensor, differentiable in ``x``: how far K's logit leads the
best other label's (positive exactly when K is the model's top-1 answer).
Why a margin and not P(K): a small CLIP's probabilities sit near uniform (its
logit scale is low), so "P(K) >= 0.5" never holds there although K is top-1;
the margin's sign is the ASR's own criterion whatever the scale.  Tests pass a
hand-written scorer; :class:`ClipKScorer` is the suspect CLIP's.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from eftclip.errors import EftclipError

__all__ = ["ClipKScorer", "KScorer", "margins", "pull_to_k", "to_tensor"]

#: images (B, 3, H, W) float in [0, 1] -> K's margin (B,), > 0 when K is the top-1 answer
KScorer = Callable[[torch.Tensor], torch.Tensor]


def to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """NHWC uint8 images -> ``(N, 3, H, W)`` float32 in [0, 1]."""
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
        raise EftclipError(f"trigger recovery needs NHWC uint8 RGB images, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def margins(scorer: KScorer, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """K's margins ``(N,)`` for images ``x`` ``(N, 3, H, W)`` in [0, 1], scored ``batch_size`` at a time."""
    parts = [scorer(x[i:i + batch_size]).detach().float() for i in range(0, len(x), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0)


def _normaliser(preprocess) -> tuple[list[float], list[float]]:
    for t in getattr(preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            return list(t.mean), list(t.std)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD)


class ClipKScorer:
    """K's margin under a CLIP: over the zero-shot logits on ``vocab``, logsumexp of K's minus the best other's.

    The preprocessing mirrors ``preprocess_val`` (centre crop to a square,
    resize to the model's side, normalise) in differentiable torch operations,
    so the optimising method can follow gradients to the pixels.  The model's
    own ``.grad`` fields are never written (callers use ``torch.autograd.grad``).
    """

    def __init__(self, bundle, vocab: Sequence[str], K: Sequence[str], templates: Sequence[str] | str,
                 device: str = "cpu"):
        from eftclip.evaluation.zeroshot import text_classifier

        vocab = list(vocab)
        missing = [k for k in K if k not in vocab]
        if not K or missing:
            raise EftclipError(f"trigger labels {missing or list(K)} are not in the vocabulary ({len(vocab)} labels)")
        self.model, self.device, self.side = bundle.model, torch.device(device), bundle.image_size
        with torch.no_grad():
            self.classifier = text_classifier(bundle, vocab, templates, device)  # (C, D) unit rows
            scale = getattr(bundle.model, "logit_scale", None)
            self.scale = float(scale.exp()) if scale is not None else 100.0
        self.k_index = torch.tensor([vocab.index(k) for k in K], device=self.device)
        mean, std = _normaliser(bundle.preprocess_val)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top:top + s, left:left + s].to(self.device)
        if s != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bicubic", align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, H, W) float in [0, 1] -> K's margin (B,)."""
        feats = F.normalize(self.model.encode_image(self._prepare(x)).float(), dim=-1)
        logits = self.scale * feats @ self.classifier.T
        others = logits.index_fill(1, self.k_index, float("-inf"))
        return logits[:, self.k_index].logsumexp(dim=-1) - others.max(dim=-1).values


def pull_to_k(scorer: KScorer, clean: np.ndarray, mask: np.ndarray, pattern: np.ndarray,
              batch_size: int = 256) -> dict:
    """How strongly a mask and pattern pull clean images to K under ``scorer``: the recovered ASR.

    ``clean`` NHWC uint8; ``mask`` HW float in [0, 1]; ``pattern`` HWC uint8.
    An image counts as pulled when K becomes its top-1 answer (margin > 0);
    images already answered K before stamping are left out, as ASR leaves out
    images of the target class.  Returns ``recovered_asr`` (None when no image
    is left), ``clean_k_rate`` (share already at K), ``n`` (images counted) and
    the mean margins before and after.
    """
    from eftclip.attacks.recovered import stamp_mask_pattern

    stamped = np.stack([stamp_mask_pattern(im, mask, pattern) for im in clean])
    before = margins(scorer, to_tensor(clean), batch_size)
    after = margins(scorer, to_tensor(stamped), batch_size)
    keep = before <= 0
    n = int(keep.sum())
    return {
        "recovered_asr": round(float((after[keep] > 0).float().mean()), 4) if n else None,
        "clean_k_rate": round(float((~keep).float().mean()), 4),
        "n": n,
        "mean_margin_clean": round(float(before.mean()), 4),
        "mean_margin_stamped": round(float(after.mean()), 4),
    }
