"""RoCLIP (Yang et al., 2023): robust pre-training by matching images to a pool of captions.

During pre-training a FIFO pool keeps the (detached) text features of the most
recent ``pool_size`` captions.  In a *matching epoch* (every ``period``-th
epoch: epochs ``period-1, 2*period-1, ...``, 0-based) each image is paired
with the caption most similar to it (cosine) among the pool and the current
batch's captions, instead of its own caption, and the contrastive loss is
computed on these pairs; other epochs use the plain CLIP loss.  A poisoned
image rarely finds its poisoned caption as nearest neighbour, which breaks the
trigger-caption association.  Images get SimCLR-style and captions EDA
augmentation (see :mod:`eftclip.training.augment`).

Our reading where the paper leaves choices open: the current batch's own
captions are candidates too (so the text tower keeps receiving gradient in
matching epochs); the pool is per process under DDP; it is saved in the run's
state file so a resumed run matches an unbroken one.
"""

from __future__ import annotations

import torch
from open_clip.loss import ClipLoss
from torch import nn


class CaptionPool:
    """FIFO pool of unit text features ``(<= size, D)``, kept on ``device``."""

    def __init__(self, size: int):
        self.size = size
        self.features: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.features is None else int(self.features.shape[0])

    @torch.no_grad()
    def add(self, text: torch.Tensor) -> None:
        text = text.detach().float()
        feats = text if self.features is None else torch.cat([self.features, text], dim=0)
        self.features = feats[-self.size :].clone()

    def match(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each image (B, D), the most similar caption feature among pool + ``text``.

        Returns ``(matched (B, D), own (B,) bool)``; ``matched`` keeps the graph to
        ``text`` where a current caption was picked.
        """
        pool = text.new_zeros((0, text.shape[1])) if self.features is None else self.features.to(text.dtype)
        candidates = torch.cat([pool, text], dim=0)
        with torch.no_grad():
            idx = (image.detach() @ candidates.detach().T).argmax(dim=1)
        own = idx == (len(pool) + torch.arange(image.shape[0], device=idx.device))
        return candidates[idx], own

    def state_dict(self) -> dict:
        return {"size": self.size, "features": None if self.features is None else self.features.cpu()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.size = int(state["size"])
        feats = state.get("features")
        self.features = None if feats is None else feats.to(device)


def is_matching_epoch(epoch: int, period: int) -> bool:
    """Whether 0-based ``epoch`` is a RoCLIP matching epoch."""
    return epoch % period == period - 1


class RoClipLoss(nn.Module):
    """``forward(image, text, logit_scale, matching=bool)``: features (B, D) unit.

    Terms: ``contrastive`` (ClipLoss on the pairs used), ``matched_own`` (share of
    images whose nearest caption was their own; 1.0 outside matching epochs).
    """

    def __init__(self, clip_loss: ClipLoss, pool: CaptionPool):
        super().__init__()
        self.clip_loss = clip_loss
        self.pool = pool
        self.matching = False

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, **_) -> dict:
        if self.matching:
            paired, own = self.pool.match(image, text)
            own_share = own.float().mean()
        else:
            paired, own_share = text, torch.ones((), device=image.device)
        term = self.clip_loss(image, paired, logit_scale)
        return {"contrastive": term, "matched_own": own_share.detach(), "loss": term}
