"""One rank's micro-batches as tensors on the training device.

The dataset yields ``CHW uint8`` images and caption strings (see
:mod:`eftclip.training.data`); a :class:`Feeder` normalises images on the
device (``(B, 3, S, S)`` float, the model's mean and std) and tokenises
captions (``(B, context_length)`` long; cached once when images are cached).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from eftclip.training.data import PairDataset, Pairs, collate, step_keys
from eftclip.training.distributed import DistInfo


def normalizer(preprocess: Any) -> tuple[list[float], list[float]]:
    """The mean and std of the model's validation transform (open_clip's OpenAI values when it has none)."""
    for t in getattr(preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            return list(t.mean), list(t.std)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD)


def _to_float(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images.float().div_(255.0) - mean) / std


class Feeder:
    """The micro-batches of this rank, step by step, decoded by workers when asked.

    ``views`` (:class:`eftclip.training.objectives.Views`) says what each pair
    yields; ``cfg`` has ``seed``, ``batch_size``, ``accum_steps``, ``workers``,
    ``cache_images`` and ``cache_max_mb``.
    """

    def __init__(self, cfg: Any, pairs: Pairs, bundle: Any, views: Any, info: DistInfo, device: torch.device, *,
                 steps_per_epoch: int, progress: bool):
        self.cfg, self.pairs, self.info, self.device = cfg, pairs, info, device
        self.steps_per_epoch = steps_per_epoch
        cache_mb = len(pairs) * 3 * bundle.image_size**2 / 2**20
        self.cache = cfg.cache_images if cfg.cache_images is not None else cache_mb <= cfg.cache_max_mb
        self.dataset = PairDataset(
            pairs, image_size=bundle.image_size, mode=views.mode, seed=cfg.seed, cache=self.cache, eda=views.eda,
            augment=views.augment, progress=progress, crop_scale=views.crop_scale,
        )
        mean, std = normalizer(bundle.preprocess_val)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.tokenizer = bundle.tokenizer
        self.token_cache = self.tokenizer(pairs.captions) if self.cache else None

    def tensors(self, b: dict, keys: list[tuple[int, int]]) -> dict:
        """A collated micro-batch as device tensors: ``image``, ``text`` and, for augmented views, ``aug_*``."""
        idx = [i for _, i in keys]
        out = {"image": _to_float(b["image"].to(self.device, non_blocking=True), self.mean, self.std)}
        if self.token_cache is not None and all(t == self.pairs.captions[i] for t, i in zip(b["text"], idx)):
            out["text"] = self.token_cache[idx].to(self.device, non_blocking=True)
        else:
            out["text"] = self.tokenizer(b["text"]).to(self.device, non_blocking=True)
        if "aug_image" in b:
            out["aug_image"] = _to_float(b["aug_image"].to(self.device, non_blocking=True), self.mean, self.std)
            out["aug_text"] = self.tokenizer(b["aug_text"]).to(self.device, non_blocking=True)
        return out

    def batches(self, order: np.ndarray, epoch: int, first: int) -> Iterator[tuple[int, list[dict]]]:
        """Yield ``(step, [micro-batch tensors])`` from step ``first`` on."""
        cfg, info = self.cfg, self.info
        plan = [
            step_keys(order, step, batch=cfg.batch_size, world=info.world_size, rank=info.rank,
                      accum=cfg.accum_steps, epoch=epoch)
            for step in range(first, self.steps_per_epoch)
        ]
        flat = [keys for micro in plan for keys in micro]
        if cfg.workers > 0 and not self.cache:
            source = iter(torch.utils.data.DataLoader(
                self.dataset, batch_sampler=flat, collate_fn=collate, num_workers=cfg.workers,
                persistent_workers=False, pin_memory=self.device.type == "cuda",
            ))
        else:
            source = (collate([self.dataset[k] for k in keys]) for keys in flat)
        for offset, micro in enumerate(plan):
            yield first + offset, [self.tensors(next(source), keys) for keys in micro]
