"""Trigger recovery by optimisation (in the spirit of Neural Cleanse; our own formulation and code).

Find the smallest mask ``m`` (HW, ``sigmoid`` of free logits) and a pattern
``p`` (HWC, ``sigmoid`` of free logits) such that clean images stamped as
``x' = (1 - m) x + m p`` are answered K by the suspect model::

    loss = mean(softplus(-margin_K(x'))) + l1 * mean(m)

(the margin is K's lead over the best other label; softplus makes a logistic
loss of it that fades once K leads).

Adam on the logits, one random batch of clean images per step (drawn with the
``torch.Generator`` passed in).  The L1 weight adapts every ``adapt_every``
steps: when at least ``target_rate`` of the recent batches' images are
answered K it is multiplied by ``adapt`` (push the mask smaller), otherwise
divided by it (let it grow back).  The answer is the smallest mask, by area,
seen at an adaptation step whose last ``adapt_every`` batches reached
``target_rate`` together; the last one if none did.

Clean images are required: flagged images already carry the trigger, so on
them an empty mask would already succeed.  Unlike occlusion, this also yields
something for triggers that cover the whole image (a blend, a warp): a broad,
faint mask whose pattern imitates the trigger's effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from eftclip.detection.trigger_scorer import KScorer, to_tensor
from eftclip.errors import EftclipError

__all__ = ["OptimiseConfig", "recover_by_optimisation"]


@dataclass(frozen=True)
class OptimiseConfig:
    """Settings of the optimising method."""

    steps: int = 300  # optimisation steps (each one forward and backward pass on one batch)
    lr: float = 0.1  # Adam step size on the mask and pattern logits
    batch_size: int = 32  # clean images per step
    l1: float = 1e-2  # starting weight of the mask's mean (its area share) in the loss
    target_rate: float = 0.9  # share of stamped images answered K that counts as a successful trigger
    adapt: float = 1.5  # factor by which the L1 weight grows after success and shrinks after failure
    adapt_every: int = 10  # steps between two adaptations of the L1 weight
    mask_init: float = -3.0  # starting mask logit (sigmoid(-3) ~ 0.05: start almost transparent)


def _step_batch(clean: torch.Tensor, size: int, rng: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, len(clean), (min(size, len(clean)),), generator=rng)
    return clean[idx]


def _adapt(l1: float, successes: list[float], cfg: OptimiseConfig) -> float:
    factor = cfg.adapt if np.mean(successes) >= cfg.target_rate else 1.0 / cfg.adapt
    return l1 * factor


def recover_by_optimisation(flagged: np.ndarray, scorer: KScorer, cfg: OptimiseConfig = OptimiseConfig(), *,
                            clean: np.ndarray | None = None, rng: torch.Generator | None = None
                            ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mask (HW float in [0, 1]), pattern (HWC uint8) and details, optimised on ``clean`` (NHWC uint8).

    ``flagged`` only fixes the image size (H, W) the trigger is recovered at.
    """
    if clean is None or len(clean) == 0:
        raise EftclipError("the 'optimise' method needs clean images (a clean pool); pass clean=...")
    if rng is None:
        raise EftclipError("the 'optimise' method needs a torch.Generator (rng=...)")
    x = to_tensor(clean)
    hw = tuple(flagged.shape[1:3]) if len(flagged) else tuple(x.shape[-2:])
    if tuple(x.shape[-2:]) != hw:
        raise EftclipError(f"clean images are {tuple(x.shape[-2:])} px, flagged images {hw}: resize them alike")
    a = (cfg.mask_init + 0.1 * torch.randn(hw, generator=rng)).requires_grad_(True)
    b = torch.randn((3, *hw), generator=rng).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=cfg.lr)
    l1, successes, best, trace = cfg.l1, [], None, []
    for step in range(1, cfg.steps + 1):
        m, p = torch.sigmoid(a), torch.sigmoid(b)
        margin = scorer((1 - m) * _step_batch(x, cfg.batch_size, rng) + m * p)
        loss = F.softplus(-margin).mean() + l1 * m.mean()
        grads = torch.autograd.grad(loss, [a, b])  # the model's own .grad stays untouched
        opt.zero_grad(set_to_none=True)
        a.grad, b.grad = grads
        opt.step()
        successes.append(float((margin.detach() > 0).float().mean()))
        if step % cfg.adapt_every == 0:
            # judged over the last adapt_every batches, not one: a single lucky batch is no trigger
            rate, area = float(np.mean(successes)), float(m.detach().mean())
            if rate >= cfg.target_rate and (best is None or area < best[0]):
                best = (area, m.detach().clone(), p.detach().clone(), step)
            l1, successes = _adapt(l1, successes, cfg), []
            trace.append({"step": step, "l1": l1, "area": round(area, 5), "rate": round(rate, 4)})
    reached = best is not None
    if not reached:
        best = (float(torch.sigmoid(a).mean()), torch.sigmoid(a).detach(), torch.sigmoid(b).detach(), cfg.steps)
    area, m, p, step = best
    pattern = (p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    details = {"best_step": step, "mask_mean": round(area, 5), "reached_target": reached,
               "trace": trace[-5:]}
    return m.numpy().astype(np.float32), pattern, details
