"""Training objectives; each returns a dict of named terms plus ``"loss"`` (the weighted total).

The contrastive term is open_clip's own :class:`open_clip.loss.ClipLoss`, with its
process-gathering semantics (``local_loss``, ``gather_with_grad``), so the
global batch is the contrastive batch exactly as in open_clip's trainer.

CleanCLIP (Bansal et al., 2023) adds in-modal self-supervision.  With unit
features ``I`` (images), ``I~`` (their AutoAugment views), ``T`` (captions),
``T~`` (their EDA variants), ``s = exp(logit_scale)`` and ``CE`` the mean
cross-entropy against the diagonal::

    multimodal    = (CE(s I T^T) + CE(s T I^T)) / 2           # == ClipLoss
    inmodal_image = CE(s I I~^T)                            # each image against all views
    inmodal_text  = CE(s T T~^T)
    inmodal       = (inmodal_image + inmodal_text) / 2
    loss          = clip_weight * multimodal + inmodal_weight * inmodal

which is the objective of CleanCLIP's reference training script.  Under
several processes the views are gathered the same way as the contrastive
features (ClipLoss.get_logits), so every term sees the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn


def make_clip_loss(*, local_loss: bool, gather_with_grad: bool, rank: int, world_size: int) -> ClipLoss:
    """open_clip's ClipLoss with the trainer's process settings."""
    return ClipLoss(
        local_loss=local_loss,
        gather_with_grad=gather_with_grad,
        cache_labels=True,
        rank=rank,
        world_size=world_size,
    )


class ContrastiveLoss(nn.Module):
    """Plain CLIP loss. ``forward(image (B, D) unit, text (B, D) unit, logit_scale exp'd scalar)``."""

    def __init__(self, clip_loss: ClipLoss):
        super().__init__()
        self.clip_loss = clip_loss

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, **_: torch.Tensor) -> dict:
        term = self.clip_loss(image, text, logit_scale)
        return {"contrastive": term, "loss": term}


class CleanClipLoss(nn.Module):
    """CleanCLIP objective; see the module docstring for the exact formula.

    ``forward(image, text, logit_scale, aug_image=, aug_text=)``: all features
    (B, D) unit-norm, ``logit_scale`` already exponentiated.
    """

    def __init__(self, clip_loss: ClipLoss, *, clip_weight: float = 1.0, inmodal_weight: float = 1.0):
        super().__init__()
        self.clip_loss = clip_loss
        self.clip_weight = clip_weight
        self.inmodal_weight = inmodal_weight

    def _one_way(self, a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        # get_logits gathers b (and a unless local_loss) across processes like the contrastive term
        logits_ab, _ = self.clip_loss.get_logits(a, b, logit_scale)
        labels = self.clip_loss.get_ground_truth(a.device, logits_ab.shape[0])
        return F.cross_entropy(logits_ab, labels)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        *,
        aug_image: torch.Tensor,
        aug_text: torch.Tensor,
    ) -> dict:
        multimodal = self.clip_loss(image, text, logit_scale)
        inmodal_image = self._one_way(image, aug_image, logit_scale)
        inmodal_text = self._one_way(text, aug_text, logit_scale)
        inmodal = (inmodal_image + inmodal_text) / 2
        total = self.clip_weight * multimodal + self.inmodal_weight * inmodal
        return {
            "multimodal": multimodal,
            "inmodal_image": inmodal_image,
            "inmodal_text": inmodal_text,
            "inmodal": inmodal,
            "loss": total,
        }
