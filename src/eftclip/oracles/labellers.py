"""Clean labellers that name image crops, for oracles that find class-agnostic regions.

Two kinds, one interface (:class:`CropScorer`):

* a **clean open_clip model** (:class:`ClipCropLabeller`): open vocabulary; each
  crop is scored against the prompts plus the labeller's own vocabulary, and a
  softmax over that union gives each prompt's probability;
* any **fixed-vocabulary classifier**: an object with ``.classnames: list[str]``
  and ``__call__(crops: list[HWC uint8]) -> np.ndarray (N, C)`` probabilities
  (rows summing to 1), e.g. the built-in world's clean region classifier.
  Prompts are mapped onto its class names by
  :class:`~eftclip.oracles.vocabulary.VocabularyMapper`; unmapped prompts are unknown.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from eftclip.errors import EftclipError
from eftclip.oracles.vocabulary import VocabularyMapper

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class FixedLabeller(Protocol):
    classnames: list[str]

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:  # (N, C) probabilities
        ...


class ClipCropLabeller:
    """Score HWC uint8 crops against class names with a clean open_clip model.

    ``bundle``: an :class:`eftclip.models.ClipBundle` (clean model, eval mode).
    ``vocabulary``: names scored alongside the prompts, so a crop of something
    else has somewhere to go (without it, softmax spreads over the prompts alone).
    ``templates``: caption templates with one ``{}``; class embeddings are the
    normalised mean over templates.  ``batch_size``: crops per forward pass.
    """

    def __init__(
        self,
        bundle: Any,
        vocabulary: Sequence[str] = (),
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        batch_size: int = 64,
    ):
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise EftclipError("labeller templates must each contain exactly one '{}'")
        self.bundle = bundle
        self.vocabulary = list(dict.fromkeys(v.strip() for v in vocabulary if v.strip()))
        self.templates = list(templates)
        self.batch_size = int(batch_size)
        self._text_cache: dict[str, Any] = {}

    def _text_features(self, names: Sequence[str]):
        import torch

        missing = [n for n in names if n not in self._text_cache]
        if missing:
            model, tok = self.bundle.model, self.bundle.tokenizer
            device = next(model.parameters()).device
            texts = [t.format(n) for n in missing for t in self.templates]
            with torch.no_grad():
                feats = []
                for i in range(0, len(texts), 256):
                    feats.append(model.encode_text(tok(texts[i : i + 256]).to(device)).float())
                feats = torch.cat(feats)
            feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            feats = feats.view(len(missing), len(self.templates), -1).mean(1)
            feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            for n, f in zip(missing, feats):
                self._text_cache[n] = f
        import torch

        return torch.stack([self._text_cache[n] for n in names])

    def image_features(self, crops: Sequence[np.ndarray]):
        """Unit image embeddings ``(N, D)`` (float32 torch tensor on the model's device)."""
        import torch
        from PIL import Image

        if not crops:
            return torch.zeros((0, 1))
        # preprocess a batch at a time: all crops of a busy batch as float inputs would not fit
        step = self.batch_size
        return torch.cat([self.encode(torch.stack([self.bundle.preprocess_val(Image.fromarray(c))
                                                   for c in crops[i : i + step]]))
                          for i in range(0, len(crops), step)])

    def encode(self, inputs):
        """Unit image embeddings ``(N, D)`` (float32, on the model's device) of CLIP inputs
        ``(N, 3, S, S)``, already resized and normalised (``preprocess_val`` or
        :func:`eftclip.oracles.device_crops.resize_boxes`), ``batch_size`` at a time."""
        import torch

        model = self.bundle.model
        device = next(model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(inputs), self.batch_size):
                f = model.encode_image(inputs[i : i + self.batch_size].to(device)).float()
                out.append(f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.cat(out) if out else torch.zeros((0, 1))

    def probs(self, crops: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        """Softmax probabilities ``(N, len(names))`` of each crop over ``names``."""
        if not crops:
            return np.zeros((0, len(names)), dtype=np.float64)
        return self.probs_from_features(self.image_features(crops), names)

    def probs_from_features(self, img, names: Sequence[str]) -> np.ndarray:
        """Softmax probabilities ``(N, len(names))`` from unit image embeddings ``(N, D)``."""
        import torch

        if len(img) == 0:
            return np.zeros((0, len(names)), dtype=np.float64)
        txt = self._text_features(list(names)).to(img.device)
        scale = getattr(self.bundle.model, "logit_scale", None)
        scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
        logits = scale * img @ txt.T
        return torch.softmax(logits.double(), dim=-1).cpu().numpy()


class CropScorer:
    """Per-prompt probabilities for crops, from either kind of labeller."""

    def __init__(self, labeller: Any, *, wordnet: bool | str = "auto"):
        self.labeller = labeller
        if isinstance(labeller, ClipCropLabeller):
            self.mapper = None
        else:
            names = getattr(labeller, "classnames", None)
            if not callable(labeller) or not names:
                raise EftclipError(
                    "a labeller must be a ClipCropLabeller or a callable with .classnames "
                    "(crops: list of HWC uint8 -> probabilities (N, C))"
                )
            self.mapper = VocabularyMapper(list(names), wordnet=wordnet)

    def split_prompts(self, prompts: Sequence[str]) -> tuple[list[str], list[str]]:
        """(prompts the labeller can score, prompts it cannot represent)."""
        if self.mapper is None:
            return list(prompts), []
        mapped, unknown = self.mapper.map_all(prompts)
        return list(mapped), unknown

    def scores(self, crops: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """Probabilities ``(N, len(prompts))`` in [0, 1]; prompts must be scorable (see split_prompts)."""
        return self.scores_batch([crops], [prompts])[0]

    def scores_batch(
        self, crops_per_image: Sequence[Sequence[np.ndarray]], prompts_per_image: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """:meth:`scores` for several images with one labeller pass over all their crops."""
        flat = [c for crops in crops_per_image for c in crops]
        bounds = np.cumsum([0] + [len(c) for c in crops_per_image])
        if not flat:
            return [np.zeros((0, len(p))) for p in prompts_per_image]
        out = []
        if self.mapper is None:
            lab: ClipCropLabeller = self.labeller
            feats = lab.image_features(flat)
            for i, prompts in enumerate(prompts_per_image):
                names = list(prompts) + [v for v in lab.vocabulary if v not in prompts]
                a, b = bounds[i], bounds[i + 1]
                probs = lab.probs_from_features(feats[a:b], names) if prompts else np.zeros((b - a, 0))
                out.append(probs[:, : len(prompts)])
            return out
        probs = np.asarray(self.labeller(flat), dtype=np.float64)
        n_cls = len(self.labeller.classnames)
        if probs.shape != (len(flat), n_cls):
            raise EftclipError(
                f"the labeller returned probabilities of shape {probs.shape}, "
                f"expected ({len(flat)}, {n_cls})"
            )
        index = {c: i for i, c in enumerate(self.labeller.classnames)}
        for i, prompts in enumerate(prompts_per_image):
            cols = [index[self.mapper.map(p)] for p in prompts]
            out.append(np.clip(probs[bounds[i] : bounds[i + 1]][:, cols], 0.0, 1.0))
        return out


def clip_labeller_from(
    *,
    bundle: Any = None,
    model: str | None = None,
    checkpoint: str | None = None,
    vocabulary: Sequence[str] = (),
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str = "cpu",
    batch_size: int = 64,
) -> ClipCropLabeller:
    """A :class:`ClipCropLabeller` from a ClipBundle, or a local checkpoint (+ architecture name)."""
    if bundle is None:
        if checkpoint is None:
            raise EftclipError("a clean CLIP labeller needs a checkpoint path (or a ClipBundle)")
        from pathlib import Path

        if not Path(checkpoint).is_file():
            raise EftclipError(f"{checkpoint}: clean CLIP checkpoint not found")
        from eftclip.models import load_checkpoint

        bundle = load_checkpoint(checkpoint, model_name=model, device=device)
    return ClipCropLabeller(bundle, vocabulary, templates=templates, batch_size=batch_size)
