"""Image-caption pairs as training batches, with deterministic per-sample randomness.

Every random choice for sample ``i`` in epoch ``e`` (crop, AutoAugment, EDA)
comes from generators seeded with ``(seed, e, i)``, and the order of epoch ``e``
is a permutation seeded with ``(seed, e)``.  A run therefore replays exactly
from any step, whatever the number of workers, which is how ``--resume``
reproduces an unbroken run.

Images are turned once into ``CHW uint8`` tensors at the model's input size
(resize of the shorter side, bicubic, then centre crop: the geometry of
open_clip's validation transform); normalisation happens on the batch on the
training device.  With ``cache=True`` every image is decoded once and kept in
memory (``N x 3 x S x S`` bytes), which makes small datasets such as the
built-in world train fast on CPU.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from eftclip.errors import EftclipError
from eftclip.training.augment import EDA, SeededAutoAugment, simclr_augment


def sample_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (for ``torch.Generator.manual_seed``)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` used in ``epoch``."""
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


def to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> ``CHW uint8`` tensor of ``size x size`` (shorter side resized, centre crop)."""
    image = image.convert("RGB")
    image = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    image = TF.center_crop(image, [size, size])
    return TF.pil_to_tensor(image)


def _default_open_image(ref: Any) -> Image.Image:
    from eftclip.data.captions import open_image

    return open_image(ref)


@dataclass
class Pairs:
    """The pairs of a run: image references and captions, ``len == n``."""

    images: list[Any]  # CaptionRecord (or anything open_image accepts)
    captions: list[str]
    skipped: int = 0  # bad rows dropped while reading (on_error="skip")

    def __len__(self) -> int:
        return len(self.captions)


class PairDataset:
    """Map-style dataset keyed by ``(epoch, index)``; see the module docstring.

    ``mode``: ``clip`` (open_clip-like random resized crop, area scale ``crop_scale``,
    default 0.9-1; a lower bound of 1 means no crop),
    ``cleanclip`` (image as is + AutoAugment view; caption + EDA variant),
    ``finetune-clip`` (image as is), ``roclip`` (SimCLR image aug + EDA caption
    when ``augment``).  An item is a dict of ``image`` (CHW uint8), ``text``
    (str) and, for cleanclip, ``aug_image`` and ``aug_text``.
    """

    def __init__(
        self,
        pairs: Pairs,
        *,
        image_size: int,
        mode: str,
        seed: int,
        cache: bool,
        eda: EDA | None = None,
        augment: bool = True,
        open_image: Callable[[Any], Image.Image] | None = None,
        progress: bool = True,
        crop_scale: tuple[float, float] = (0.9, 1.0),
    ):
        if mode not in ITEM_KINDS:
            raise ValueError(f"unknown dataset mode {mode!r} (known: {', '.join(ITEM_KINDS)})")
        if ITEM_KINDS[mode].needs_eda(augment) and eda is None:
            raise ValueError(f"mode {mode!r} needs an EDA instance")
        self.pairs = pairs
        self.image_size = image_size
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.mode = mode
        self.seed = seed
        self.eda = eda
        self.augment = augment
        self.open_image = open_image or _default_open_image
        self.autoaugment = SeededAutoAugment() if mode == "cleanclip" else None
        self.cache: torch.Tensor | None = None
        if cache:
            self.cache = torch.empty((len(pairs), 3, image_size, image_size), dtype=torch.uint8)
            for i in tqdm(range(len(pairs)), desc="decoding images", disable=not progress, leave=False):
                self.cache[i] = self._decode(i)

    def __len__(self) -> int:
        return len(self.pairs)

    def _decode(self, i: int) -> torch.Tensor:
        ref = self.pairs.images[i]
        try:
            return to_uint8(self.open_image(ref), self.image_size)
        except EftclipError:
            raise
        except Exception as exc:  # an unreadable image names its row
            name = getattr(ref, "image", ref)
            row = getattr(ref, "row", None)
            where = f" (row {row})" if row is not None else ""
            raise EftclipError(f"{name}{where}: cannot read image ({exc})") from exc

    def base_image(self, i: int) -> torch.Tensor:
        return self.cache[i] if self.cache is not None else self._decode(i)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        image = self.base_image(i)
        caption = self.pairs.captions[i]
        item: dict[str, Any] = {"text": caption}
        item.update(ITEM_KINDS[self.mode].make(self, image, caption, SampleRandom(self.seed, epoch, i)))
        return item


class SampleRandom:
    """One sample's generators, made on first use: a plain pass draws nothing, and making
    both costs about as much as the rest of the item (they depend on ``(seed, epoch, index)`` only)."""

    def __init__(self, seed: int, epoch: int, index: int):
        self.key = (seed, epoch, index)

    @functools.cached_property
    def gen(self) -> torch.Generator:
        """torch generator for image augmentations."""
        return torch.Generator().manual_seed(sample_seed(*self.key))

    @functools.cached_property
    def rng(self) -> np.random.Generator:
        """numpy generator for caption augmentations (EDA)."""
        return np.random.default_rng([*self.key, 11])


# ---------------------------------------------------------------- what an item holds, per mode


@dataclass(frozen=True)
class ItemKind:
    """How a dataset mode turns one pair into an item (beside ``text``, the caption)."""

    make: Callable[["PairDataset", torch.Tensor, str, SampleRandom], dict]  # -> item fields
    needs_eda: Callable[[bool], bool]  # (augment) -> whether the mode varies captions with EDA


def _plain_item(ds: "PairDataset", image, caption, rand) -> dict:
    return {"image": image}


def _crop_item(ds: "PairDataset", image, caption, rand) -> dict:
    return {"image": image if ds.crop_scale[0] >= 1.0 else _random_resized_crop(image, rand.gen, scale=ds.crop_scale)}


def _cleanclip_item(ds: "PairDataset", image, caption, rand) -> dict:
    return {"image": image, "aug_image": ds.autoaugment(image, rand.gen), "aug_text": ds.eda.augment(caption, rand.rng)}


def _roclip_item(ds: "PairDataset", image, caption, rand) -> dict:
    if not ds.augment:
        return {"image": image}
    return {"image": simclr_augment(image, rand.gen), "text": ds.eda.augment(caption, rand.rng)}


ITEM_KINDS: dict[str, ItemKind] = {
    "clip": ItemKind(_crop_item, lambda augment: False),
    "finetune-clip": ItemKind(_plain_item, lambda augment: False),
    "cleanclip": ItemKind(_cleanclip_item, lambda augment: True),
    "roclip": ItemKind(_roclip_item, lambda augment: augment),
}


def _random_resized_crop(img: torch.Tensor, gen: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    """open_clip's training crop (RandomResizedCrop, scale 0.9-1, ratio 3/4-4/3) on a uint8 tensor."""
    _, h, w = img.shape
    area = h * w
    for _ in range(10):
        r = torch.rand(3, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * r[0])
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[1])
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(r[2] * (h - ch + 1))
            left = int(float(torch.rand((), generator=gen)) * (w - cw + 1))
            if (ch, cw) == (h, w):
                return img
            return TF.resized_crop(img, top, left, ch, cw, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return img


def collate(items: Sequence[dict]) -> dict:
    """Stack a list of items: image tensors to ``(B, 3, S, S) uint8``, texts to lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def step_keys(order: np.ndarray, step: int, *, batch: int, world: int, rank: int, accum: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The micro-batches (``accum`` lists of ``(epoch, index)``) of this rank at ``step``.

    A step consumes ``batch * world * accum`` consecutive entries of the
    epoch's order: micro-batch ``j`` is chunk ``j`` of size ``batch * world``,
    and rank ``r`` takes rows ``r*batch .. (r+1)*batch`` of it, so the gathered
    batch (ranks concatenated in order) is the one a single process would see.
    """
    per_step = batch * world * accum
    chunk = order[step * per_step : (step + 1) * per_step]
    micro = []
    for j in range(accum):
        part = chunk[j * batch * world : (j + 1) * batch * world]
        mine = part[rank * batch : (rank + 1) * batch]
        micro.append([(epoch, int(i)) for i in mine])
    return micro
