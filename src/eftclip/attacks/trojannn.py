"""Trojaning-style trigger (Liu et al., NDSS 2018): a patch optimised against a given model.

The Trojaning attack ("TrojanNN") does not pick its trigger by hand: it
optimises the trigger's pixels so that they drive chosen internal units of the
victim model hard.  For CLIP the natural goal is the target caption itself, so
:meth:`TrojanNNTrigger.optimise` runs Adam over the patch pixels to maximise
the cosine similarity between the patched images' embeddings and the target
text's embedding (the mean over caption templates), optionally plus the mean
activation of chosen ``units`` of a ``layer`` (the original attack's neuron
excitation).  Gradients flow through a tensor version of the model's
validation preprocessing (resize of the shorter side, centre crop, normalise),
so the patch is optimised at the images' own resolution, where it will be
stamped.

The optimised pattern is saved as a PNG (:func:`save_pattern`) and then used
exactly like a BadNet patch: ``create_trigger("trojannn", pattern_file=...)``,
so poisoning and evaluation reuse the same pixels.

Not reproduced from the original: its retraining of the model on
reverse-engineered inputs (here the model is trained on the poisoned data by
``eftclip train``), and its automatic neuron selection (here the units are
given).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eftclip.attacks.base import (
    PatchTrigger,
    check_alpha,
    check_position,
    load_pattern_image,
    parse_position,
    place_patch,
    register_trigger,
    resize_pattern,
)
from eftclip.errors import EftclipError

#: caption templates for the target text when none are given
DEFAULT_TARGET_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


@register_trigger("trojannn")
@dataclass(frozen=True)
class TrojanNNTrigger(PatchTrigger):
    """Stamp an optimised pattern (a PNG from :meth:`optimise` + :func:`save_pattern`) like a BadNet patch."""

    pattern_file: str = ""  # PNG written by save_pattern (required)
    size: int = 0  # patch side in pixels; 0 keeps the pattern file's own size
    position: str = "bottom-right"  # top-left, top-right, bottom-left, bottom-right, center, random, or "x,y"
    alpha: float = 1.0  # patch opacity in (0, 1]

    def __post_init__(self) -> None:
        if not self.pattern_file:
            raise ValueError(
                "pattern_file is required (optimise a pattern first, e.g. eftclip poison "
                "--attack trojannn --trojannn-model CKPT)"
            )
        if self.size < 0:
            raise ValueError(f"size must be 0 (the file's size) or a positive number of pixels, got {self.size}")
        check_alpha(self.alpha)
        object.__setattr__(self, "position", check_position(self.position))
        path = Path(self.pattern_file).expanduser()
        if not path.is_file():
            raise ValueError(f"pattern_file {self.pattern_file}: file not found")
        object.__setattr__(self, "pattern_file", str(path.resolve()))
        load_pattern_image(path, "trojannn pattern_file")

    @functools.cached_property
    def _patch(self) -> np.ndarray:
        pattern = load_pattern_image(self.pattern_file, "trojannn pattern_file")
        if self.size:
            pattern = resize_pattern(pattern, (self.size, self.size))
        return pattern

    def patch(self) -> np.ndarray:
        return self._patch

    @classmethod
    def optimise(cls, bundle: Any, target: str, images: Sequence[Any], steps: int = 100, rng: Any = None,
                 **options: Any) -> np.ndarray:
        """Optimise a patch against ``bundle``; return it as HWC uint8.

        ``bundle``: a ClipBundle (``.model``, ``.preprocess_val``, ``.tokenizer``).
        ``images``: HWC uint8 arrays or PIL images the patch is optimised on
        (each at least ``size`` px a side).  ``rng``: a ``torch.Generator``
        (initial patch, batches, random positions).  ``steps=0`` returns the
        initial random patch.  ``options`` (``size``, ``position``, ``lr``,
        ``templates``, ``layer``, ``units``, ...) are those of :func:`optimise_patch`.
        """
        return optimise_patch(bundle, target, images, steps, rng, **options)["pattern"]


def save_pattern(pattern: np.ndarray, path: str | Path) -> Path:
    """Write a pattern (HWC uint8) as a lossless PNG, atomically; return the path."""
    from PIL import Image

    from eftclip.io import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise EftclipError(f"{path}: a trojannn pattern is saved as .png (lossless)")
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(pattern, dtype=np.uint8)).save(tmp, format="PNG")
    return path


# --- the optimisation -------------------------------------------------------------------------


def _as_uint8(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
        arr = image
    else:  # a PIL image
        arr = np.asarray(image.convert("RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise EftclipError(f"trojannn: images must be HWC uint8 RGB, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def preprocess_geometry(bundle: Any) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """Input size (h, w) and normalisation mean/std of ``bundle``'s validation transform."""
    from torchvision import transforms as T

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop: tuple[int, int] | None = None
    for t in getattr(bundle.preprocess_val, "transforms", []):
        if isinstance(t, T.Normalize):
            mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
        elif isinstance(t, T.CenterCrop):
            crop = tuple(int(v) for v in t.size)  # type: ignore[assignment]
    if crop is None:
        size = getattr(bundle.model.visual, "image_size", None)
        if size is None:
            raise EftclipError("trojannn: cannot tell the model's input size from its preprocessing")
        crop = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if mean is None or std is None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean, std = tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)
    return crop, mean, std


def _to_model_input(x: "torch.Tensor", crop: tuple[int, int]) -> "torch.Tensor":  # noqa: F821
    """(3, H, W) float in [0, 1] -> (3, h, w): shorter side resized, centre crop (differentiable)."""
    import torch.nn.functional as F

    _, H, W = x.shape
    ch, cw = crop
    scale = max(ch, cw) / min(H, W)
    nh, nw = max(ch, round(H * scale)), max(cw, round(W * scale))
    if (nh, nw) != (H, W):
        x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
    top, left = (nh - ch) // 2, (nw - cw) // 2
    return x[:, top : top + ch, left : left + cw].clamp(0.0, 1.0)


def target_text_embedding(bundle: Any, target: str, templates: Sequence[str] | None, device: str) -> "torch.Tensor":  # noqa: F821
    """Unit-norm mean text embedding of the target over ``templates``: (D,)."""
    import torch

    templates = list(templates or DEFAULT_TARGET_TEMPLATES)
    texts = [t.format(target) for t in templates]
    with torch.no_grad():
        tokens = bundle.tokenizer(texts).to(device)
        feats = bundle.model.encode_text(tokens)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
    return mean / mean.norm()


def optimise_patch(
    bundle: Any,
    target: str,
    images: Sequence[Any],
    steps: int,
    rng: Any,
    *,
    size: int = 16,
    position: str = "bottom-right",
    lr: float = 0.05,
    templates: Sequence[str] | None = None,
    layer: str | None = None,
    units: Sequence[int] | None = None,
    unit_weight: float = 1.0,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Adam over a patch's pixels; returns ``{"pattern": HWC uint8, "history": [mean similarity per step]}``.

    Loss per step: ``-mean cos(embed(patched image), embed(target text))``
    ``- unit_weight * mean activation of layer[units]`` (the second term only
    when ``layer`` and ``units`` are given; ``layer`` is a submodule name of
    ``bundle.model`` such as ``visual.transformer.resblocks.0.mlp.c_fc``;
    units index the channel dimension: dim 1 of a 4-d conv output, else the
    last dim).  The patch is kept in [0, 1] by a sigmoid over free
    parameters.  The model's weights are not changed.
    """
    import torch
    from tqdm import tqdm

    arrays, position = _check_optimise_args(rng, steps, size, images, layer, units, position)
    stamper = _Stamper(bundle, arrays, size, position, device)
    with _frozen(bundle.model), _excitation(bundle.model, layer, units, device) as excitation:
        text = target_text_embedding(bundle, target, templates, device)
        init = torch.rand((3, size, size), generator=rng).clamp(1e-3, 1 - 1e-3)
        logits = torch.logit(init).to(device).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=lr)
        history: list[float] = []
        for _ in tqdm(range(steps), desc="trojannn patch", disable=not progress, file=None):
            batch = _draw_batch(len(arrays), batch_size, rng)
            feats = bundle.model.encode_image(stamper(batch, torch.sigmoid(logits), rng))
            feats = feats / feats.norm(dim=-1, keepdim=True)
            sim = (feats @ text).mean()
            loss = -sim - unit_weight * excitation() if layer is not None else -sim
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(sim.detach()))
        pattern = torch.sigmoid(logits.detach()).mul(255).round().clamp(0, 255).to(torch.uint8)
        return {"pattern": pattern.permute(1, 2, 0).cpu().numpy(), "history": history}


def _check_optimise_args(rng, steps, size, images, layer, units, position) -> tuple[list[np.ndarray], str]:
    """Raise EftclipError for a bad setting; the images as HWC uint8 arrays and the checked position."""
    import torch

    if rng is None or not isinstance(rng, torch.Generator):
        raise EftclipError("trojannn: optimise needs a torch.Generator as rng (seeded by the caller)")
    if steps < 0:
        raise EftclipError(f"trojannn: steps must be >= 0, got {steps}")
    if size < 1:
        raise EftclipError(f"trojannn: size must be at least 1 pixel, got {size}")
    if not images:
        raise EftclipError("trojannn: optimise needs at least one image")
    if (layer is None) != (units is None):
        raise EftclipError("trojannn: give both layer and units for neuron excitation, or neither")
    position = check_position(position)
    arrays = [_as_uint8(im) for im in images]
    for i, arr in enumerate(arrays):
        if size > arr.shape[0] or size > arr.shape[1]:
            raise EftclipError(
                f"trojannn: patch of {size}x{size} px is larger than image {i} ({arr.shape[1]}x{arr.shape[0]} px)"
            )
    return arrays, position


def _draw_batch(n: int, batch_size: int, rng) -> list[int]:
    """The image indices of one step: all of them, or a random ``batch_size`` drawn from ``rng``."""
    import torch

    if n > batch_size:
        return torch.randperm(n, generator=rng)[:batch_size].tolist()
    return list(range(n))


class _Stamper:
    """Stamps a (3, size, size) patch in [0, 1] on chosen images and preprocesses them differentiably."""

    def __init__(self, bundle: Any, arrays: Sequence[np.ndarray], size: int, position: str, device: str):
        import torch

        self.size, self.position = size, position
        self.crop, mean, std = preprocess_geometry(bundle)
        self.mean = torch.tensor(mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(std, device=device).view(3, 1, 1)
        self.clean = [torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1).to(device) for a in arrays]
        # fixed positions are computed once; "random" is redrawn every step from rng
        self.fixed_xy = (None if parse_position(position) == "random"
                         else [place_patch(position, a.shape[:2], (size, size), None) for a in arrays])

    def __call__(self, batch: Sequence[int], patch, rng):
        """``(B, 3, h, w)`` normalised model inputs of images ``batch`` with ``patch`` stamped on."""
        import torch

        size, inputs = self.size, []
        for i in batch:
            x = self.clean[i]
            if self.fixed_xy is None:
                H, W = x.shape[1:]
                px = int(torch.randint(0, W - size + 1, (1,), generator=rng))
                py = int(torch.randint(0, H - size + 1, (1,), generator=rng))
            else:
                px, py = self.fixed_xy[i]
            stamp = torch.zeros_like(x)
            region = torch.zeros_like(x)
            stamp[:, py : py + size, px : px + size] = patch
            region[:, py : py + size, px : px + size] = 1.0
            composed = x * (1 - region) + stamp
            inputs.append((_to_model_input(composed, self.crop) - self.mean) / self.std)
        return torch.stack(inputs)


@contextmanager
def _frozen(model):
    """Eval mode and no weight gradients inside the block; the model's own settings restored after."""
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)


@contextmanager
def _excitation(model, layer: str | None, units: Sequence[int] | None, device: str):
    """Yields ``() -> mean activation of layer[units]`` of the last forward pass (a hook on ``layer``;
    removed on exit); without a layer it yields None."""
    import torch

    if layer is None:
        yield None
        return
    try:
        module = model.get_submodule(layer)
    except AttributeError as exc:
        raise EftclipError(f"trojannn: model has no layer {layer!r}") from exc
    activation: dict[str, torch.Tensor] = {}
    hook = module.register_forward_hook(lambda _m, _i, out: activation.__setitem__("a", out))
    unit_idx = torch.as_tensor(list(units), dtype=torch.long, device=device)  # type: ignore[arg-type]

    def mean_activation():
        a = activation["a"]
        return a.index_select(1 if a.ndim == 4 else a.ndim - 1, unit_idx).float().mean()

    try:
        yield mean_activation
    finally:
        hook.remove()


def target_similarity(
    bundle: Any,
    target: str,
    images: Sequence[Any],
    pattern: np.ndarray,
    *,
    position: str = "bottom-right",
    templates: Sequence[str] | None = None,
    rng: np.random.Generator | None = None,
    device: str = "cpu",
) -> float:
    """Mean cosine similarity of the stamped images to the target text, through ``preprocess_val``.

    This is the real evaluation path (uint8 image, PIL, the bundle's own
    transform), independent of the differentiable approximation used while
    optimising.
    """
    import torch
    from PIL import Image

    from eftclip.attacks.base import blend

    text = target_text_embedding(bundle, target, templates, device)
    rng = rng if rng is not None else np.random.default_rng(0)
    batch = []
    for im in images:
        arr = _as_uint8(im)
        xy = place_patch(position, arr.shape[:2], pattern.shape[:2], rng)
        stamped = blend(arr, pattern, 1.0, xy).image
        batch.append(bundle.preprocess_val(Image.fromarray(stamped)))
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = model.encode_image(torch.stack(batch).to(device))
            feats = feats / feats.norm(dim=-1, keepdim=True)
            return float((feats @ text).mean())
    finally:
        model.train(was_training)
