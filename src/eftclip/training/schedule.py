"""Learning-rate schedule with the semantics of open_clip's trainer (``--lr-scheduler cosine``).

Step ``s`` (0-based, counted in optimiser steps) gets
``base_lr * (s + 1) / warmup`` while ``s < warmup``, then
``0.5 * (1 + cos(pi * (s - warmup) / (total - warmup))) * base_lr``.
The lr is assigned before each step, as open_clip does.
"""

from __future__ import annotations

import math

import torch


def cosine_lr_at(step: int, *, base_lr: float, warmup: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate of optimiser step ``step`` (0-based) under warm-up then cosine decay."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = total_steps - warmup
    if decay_steps <= 0:
        return base_lr
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


class CosineWithWarmup:
    """Sets every param group's lr for a given step; stateless apart from its parameters.

    Its state is just ``{"step": s}`` so it can be checkpointed with the optimiser.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, base_lr: float, warmup: int, total_steps: int):
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup = warmup
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        lr = cosine_lr_at(step, base_lr=self.base_lr, warmup=self.warmup, total_steps=self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
