"""Training objectives behind one seam: the loop knows none of them by name.

An :class:`Objective` says what each pair yields (``views``), may add
features computed from the batch (``features``, no gradient: e.g. a frozen
model's embeddings), and has one ``forward(feats) -> {name: tensor}``
returning its named terms.  The loss of a step is the sum, over the run's
objectives in order, of ``weight * term`` for each entry of the objective's
``weights``; terms without a weight are logged only.  Every term is written to
``summary.csv`` (per epoch means) beside ``loss``.

``feats`` holds unit-norm ``image``, ``text`` (B, D) and the exponentiated
``logit_scale`` (a scalar tensor) from the model in training, plus
``aug_image``/``aug_text`` for views that make them and whatever the
objectives' ``features`` added (under gradient accumulation every key is
concatenated over the micro-batches the same way).

Objectives are registered by name (:data:`OBJECTIVES`, :func:`register_objective`);
a config lists the names of its run (``cfg.objective_names()``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from open_clip.loss import ClipLoss

from eftclip.training.augment import EDA, synonym_source
from eftclip.training.losses import CleanClipLoss, ContrastiveLoss
from eftclip.training.roclip import CaptionPool, RoClipLoss, is_matching_epoch


@dataclass(frozen=True)
class Views:
    """What the dataset yields for each pair (see :class:`eftclip.training.data.PairDataset`)."""

    mode: str  # PairDataset item kind: clip | cleanclip | roclip
    eda: EDA | None = None  # the caption augmenter, for kinds that vary captions
    augment: bool = True  # roclip: SimCLR image and EDA caption augmentation
    crop_scale: tuple[float, float] = (1.0, 1.0)  # clip: random resized crop area range (1.0 = no crop)


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective may be built from, besides the run's config."""

    clip_loss: ClipLoss  # open_clip's loss with the run's process settings
    model: torch.nn.Module  # the model as the run starts (before any step), on its device


class Objective(Protocol):
    """One loss of a run."""

    views: Views | None  # what each pair yields; None = whatever the run's first objective asks for
    weights: dict[str, float]  # term -> its weight in the loss; other terms are only logged

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        """Extra features from a batch's tensors (``image`` (B, 3, S, S) normalised, ``text`` tokens)."""

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named terms on one (global) batch of features; scalars."""

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based)."""

    def after_step(self, text: torch.Tensor) -> None:
        """Called after each optimiser step with the step's text features (B, D)."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps so that a resumed run equals an unbroken one."""

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output."""


class BaseObjective:
    """No-op hooks, so each objective writes only what it needs."""

    views: Views | None = None
    weights: dict[str, float] = {}

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        return {}

    def start_epoch(self, epoch: int) -> None:
        pass

    def after_step(self, text: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        pass


ObjectiveFactory = Callable[[Any, ObjectiveContext], Objective]
OBJECTIVES: dict[str, ObjectiveFactory] = {}


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    def add(factory: ObjectiveFactory) -> ObjectiveFactory:
        OBJECTIVES[name] = factory
        return factory

    return add


def build_objectives(cfg: Any, ctx: ObjectiveContext) -> list[Objective]:
    """The run's objectives, from ``cfg.objective_names()``; the first one's views are the run's."""
    return [OBJECTIVES[name](cfg, ctx) for name in cfg.objective_names()]


def total_terms(objectives: list[Objective], feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every objective's terms, then ``loss`` = the weighted sum, summed in order."""
    terms: dict[str, torch.Tensor] = {}
    loss: torch.Tensor | None = None
    for objective in objectives:
        own = objective.forward(feats)
        for name, weight in objective.weights.items():
            part = weight * own[name]
            loss = part if loss is None else loss + part
        terms.update(own)
    terms["loss"] = loss
    return terms


# ---------------------------------------------------------------- the objectives


class Contrastive(BaseObjective):
    """CLIP's contrastive loss (open_clip's ClipLoss). Term: ``contrastive``."""

    def __init__(self, clip_loss: ClipLoss, crop_scale: tuple[float, float]):
        self.loss = ContrastiveLoss(clip_loss)
        self.views = Views("clip", crop_scale=crop_scale)
        self.weights = {"contrastive": 1.0}

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"contrastive": self.loss(feats["image"], feats["text"], feats["logit_scale"])["contrastive"]}


@register_objective("clip")
def _contrastive(cfg: Any, ctx: ObjectiveContext) -> Objective:
    return Contrastive(ctx.clip_loss, cfg.crop_scale())


class CleanClip(BaseObjective):
    """CleanCLIP: contrastive + in-modal against AutoAugment / EDA views (see :mod:`eftclip.training.losses`).

    Terms: ``multimodal``, ``inmodal_image``, ``inmodal_text``, ``inmodal``;
    the loss weighs ``multimodal`` and ``inmodal``.
    """

    def __init__(self, clip_loss: ClipLoss, *, clip_weight: float, inmodal_weight: float, eda: EDA):
        self.loss = CleanClipLoss(clip_loss, clip_weight=clip_weight, inmodal_weight=inmodal_weight)
        self.views = Views("cleanclip", eda=eda)
        self.weights = {"multimodal": clip_weight, "inmodal": inmodal_weight}

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = self.loss(feats["image"], feats["text"], feats["logit_scale"],
                          aug_image=feats["aug_image"], aug_text=feats["aug_text"])
        return {k: v for k, v in terms.items() if k != "loss"}


@register_objective("cleanclip")
def _cleanclip(cfg: Any, ctx: ObjectiveContext) -> Objective:
    return CleanClip(ctx.clip_loss, clip_weight=cfg.clip_weight, inmodal_weight=cfg.inmodal_weight,
                     eda=EDA(synonym_source(cfg.eda_synonyms), alpha=cfg.eda_alpha))


class RoClip(BaseObjective):
    """RoCLIP: in matching epochs each image is paired with its nearest caption of a pool.

    Terms: ``contrastive`` (weighted), ``matched_own`` (logged: share of images whose nearest caption was their own).
    """

    def __init__(self, clip_loss: ClipLoss, *, pool_size: int, period: int, augment: bool, synonyms: str = "auto"):
        self.pool = CaptionPool(pool_size)
        self.loss = RoClipLoss(clip_loss, self.pool)
        self.period = period
        self.views = Views("roclip", eda=EDA(synonym_source(synonyms)) if augment else None, augment=augment)
        self.weights = {"contrastive": 1.0}

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = self.loss(feats["image"], feats["text"], feats["logit_scale"])
        return {"contrastive": terms["contrastive"], "matched_own": terms["matched_own"]}

    def start_epoch(self, epoch: int) -> None:
        self.loss.matching = is_matching_epoch(epoch, self.period)

    def after_step(self, text: torch.Tensor) -> None:
        self.pool.add(text.detach())

    def state_dict(self) -> dict:
        return self.pool.state_dict()

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        if state:
            self.pool.load_state_dict(state, device)


@register_objective("roclip")
def _roclip(cfg: Any, ctx: ObjectiveContext) -> Objective:
    return RoClip(ctx.clip_loss, pool_size=cfg.roclip_pool_size, period=cfg.roclip_period,
                  augment=cfg.roclip_augment, synonyms=cfg.eda_synonyms)


class CleanFeatureAnchor(BaseObjective):
    """Keeps the repaired model's embeddings of the batch's pairs near the starting model's.

    A frozen copy ``f0`` of the model as the run starts is kept (eval mode, no
    gradient).  Term ``anchor`` = ``(mean_i ||f(x_i) - f0(x_i)||^2 over unit image
    embeddings + the same over unit text embeddings) / 2``, in [0, 4]; it holds
    clean accuracy while the other objectives unlearn the trigger.
    """

    def __init__(self, model: torch.nn.Module, weight: float):
        self.frozen = copy.deepcopy(model).eval()
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.weights = {"anchor": weight}

    @torch.no_grad()
    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        image = self.frozen.encode_image(batch["image"], normalize=True)
        text = self.frozen.encode_text(batch["text"], normalize=True)
        return {"anchor_image": image, "anchor_text": text}

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = (feats["image"] - feats["anchor_image"].to(feats["image"].dtype)).pow(2).sum(dim=-1).mean()
        text = (feats["text"] - feats["anchor_text"].to(feats["text"].dtype)).pow(2).sum(dim=-1).mean()
        return {"anchor": (image + text) / 2}


@register_objective("anchor")
def _anchor(cfg: Any, ctx: ObjectiveContext) -> Objective:
    return CleanFeatureAnchor(ctx.model, cfg.anchor_weight)
