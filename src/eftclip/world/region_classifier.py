"""The world's region labeller: a small CNN trained only on the clean ``reference/`` split.

It stands in for the clean CLIP that names FastSAM's masks: given crops of
regions (HWC uint8, any size) it returns class probabilities ``(N, C)`` over
the world's categories plus a ``background`` class (learned from crops of
object-free backgrounds, so that a region holding no object is not forced
onto a category).

Saved as ``<name>.safetensors`` plus ``<name>.json`` (class names, input size,
architecture, training metrics), both written atomically.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from eftclip.errors import EftclipError
from eftclip.io import atomic_path, write_json
from eftclip.progress import bars_enabled

FORMAT = "eftclip-region-classifier-1"


@dataclass(frozen=True)
class RegionClassifierConfig:
    """Architecture and training settings of the region classifier."""

    input_size: int = 32  # crops are resized (bilinear) to input_size x input_size
    widths: tuple[int, ...] = (16, 32, 64, 64)  # channels of the conv blocks (each halves the size)
    batch_size: int = 128  # training batch
    lr: float = 5e-3  # AdamW peak learning rate (cosine decay)
    weight_decay: float = 1e-4  # AdamW weight decay
    val_fraction: float = 0.1  # share of reference crops held out to measure accuracy


class RegionNet(nn.Module):
    """Conv blocks (conv3x3-BN-ReLU, max-pool) and a linear head: ``(B, 3, S, S)`` -> logits ``(B, C)``."""

    def __init__(self, num_classes: int, widths: tuple[int, ...]):
        super().__init__()
        layers, cin = [], 3
        for cout in widths:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _init(model: nn.Module, generator: torch.Generator) -> None:
    # explicit generator: the global torch RNG is never touched
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01, generator=generator)
            nn.init.zeros_(m.bias)


def crops_to_tensor(crops: list[np.ndarray], size: int) -> torch.Tensor:
    """HWC uint8 crops (any sizes) -> float tensor ``(N, 3, size, size)`` in [-1, 1]."""
    arr = np.empty((len(crops), size, size, 3), np.uint8)
    for i, c in enumerate(crops):
        c = np.asarray(c)
        if c.ndim != 3 or c.shape[2] != 3 or c.shape[0] < 1 or c.shape[1] < 1:
            raise EftclipError(f"crop {i}: expected an HWC RGB image, got shape {c.shape}")
        arr[i] = np.asarray(Image.fromarray(c.astype(np.uint8)).resize((size, size), Image.BILINEAR))
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


class RegionClassifier:
    """A trained region classifier: ``__call__(crops: list[HWC uint8]) -> np.ndarray (N, C)`` probabilities.

    ``classnames`` index the columns (the world's categories, then ``background``).
    """

    def __init__(self, net: RegionNet, classnames: list[str], input_size: int, meta: dict | None = None):
        self.net = net.eval()
        self.classnames = list(classnames)
        self.input_size = int(input_size)
        self.meta = dict(meta or {})

    @torch.no_grad()
    def __call__(self, crops: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, len(self.classnames)), np.float32)
        out = []
        for i in range(0, len(crops), batch_size):
            x = crops_to_tensor(list(crops[i : i + batch_size]), self.input_size)
            out.append(F.softmax(self.net(x), dim=1).numpy())
        return np.concatenate(out).astype(np.float32)


def _read_reference(reference_dir: Path) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    if not reference_dir.is_dir():
        raise EftclipError(f"{reference_dir}: reference folder not found")
    classes = sorted(p.name for p in reference_dir.iterdir() if p.is_dir())
    # the world's class order (classnames.json beside reference/) when present, background last
    names_file = reference_dir.parent / "classnames.json"
    if names_file.is_file():
        from eftclip.io import read_json

        order = [c for c in read_json(names_file) if c in classes]
        classes = order + sorted(c for c in classes if c not in order and c != "background")
    classes = [c for c in classes if c != "background"] + (["background"] if (reference_dir / "background").is_dir() else [])
    if len(classes) < 2:
        raise EftclipError(f"{reference_dir}: needs at least two class folders, found {classes}")
    crops, labels = [], []
    for ci, c in enumerate(classes):
        files = sorted((reference_dir / c).glob("*.png"))
        if not files:
            raise EftclipError(f"{reference_dir / c}: no .png crops")
        for f in files:
            try:
                crops.append(np.asarray(Image.open(f).convert("RGB")))
            except OSError as exc:
                raise EftclipError(f"{f}: cannot read image ({exc})") from exc
            labels.append(ci)
    return crops, np.asarray(labels), classes


def train_region_classifier(
    reference_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    seconds: float | None = None,
    epochs: int = 10,
    config: RegionClassifierConfig = RegionClassifierConfig(),
    threads: int | None = None,
) -> Path:
    """Train on ``reference_dir`` (ImageFolder of crops) and save to ``out`` (``.safetensors``).

    Trains for ``epochs`` epochs, or stops earlier once ``seconds`` of wall time
    are spent.  A ``val_fraction`` of the crops is held out (stratified by the
    seeded split) and its accuracy is stored in the JSON side file as
    ``val_accuracy``, beside per-class accuracy.  ``threads``: torch threads
    while training (restored after).  Returns the ``.safetensors`` path.
    """
    from eftclip.threads import torch_threads

    reference_dir = Path(reference_dir)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    with torch_threads(threads or None):
        crops, labels, classes = _read_reference(reference_dir)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 77]))
        gen = torch.Generator().manual_seed(int(seed))
        x_all = crops_to_tensor(crops, config.input_size)
        y_all = torch.from_numpy(labels).long()
        perm = rng.permutation(len(labels))
        n_val = int(round(config.val_fraction * len(labels)))
        val_idx, tr_idx = torch.from_numpy(perm[:n_val]), torch.from_numpy(perm[n_val:])
        # the layers' default init draws from the global RNG: fork it so that the caller's stream
        # is left as it was, then initialise from our own generator
        with torch.random.fork_rng(devices=[]):
            net = RegionNet(len(classes), tuple(config.widths))
        _init(net, gen)
        metrics = _fit(net, x_all[tr_idx], y_all[tr_idx], config, gen, epochs=epochs, seconds=seconds)
        if n_val:
            metrics.update(_held_out_accuracy(net, x_all[val_idx], y_all[val_idx], classes))
    meta = {
        "format": FORMAT,
        "classnames": classes,
        "background_class": "background" if "background" in classes else None,
        "config": asdict(config),
        "seed": int(seed),
        "reference_dir": str(reference_dir.absolute()),
        "n_crops": len(labels),
        "metrics": metrics,
    }
    _save(out, net, meta)
    return out


def _fit(net: RegionNet, xtr: torch.Tensor, ytr: torch.Tensor, config: RegionClassifierConfig,
         gen: torch.Generator, *, epochs: int, seconds: float | None) -> dict:
    """AdamW with a cosine lr over ``epochs`` (or until ``seconds`` pass), random flips drawn from ``gen``;
    returns ``{"steps", "train_seconds", "final_loss"}`` and leaves ``net`` in eval mode."""
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(ytr) / config.batch_size))
    total = steps_per_epoch * epochs
    start = time.perf_counter()
    step = 0

    def out_of_time() -> bool:
        return seconds is not None and time.perf_counter() - start >= seconds

    net.train()
    with tqdm(total=total, desc="region classifier", file=sys.stderr, leave=False, mininterval=1.0,
              disable=not bars_enabled()) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(ytr), generator=gen)
            for b in range(steps_per_epoch):
                idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                xb = xtr[idx]
                # flips keep a silhouette's category; the world draws both orientations
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                for g in opt.param_groups:
                    g["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(net(xb), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                if out_of_time():
                    break
            if out_of_time():
                break
    net.eval()
    return {"steps": step, "train_seconds": round(time.perf_counter() - start, 2), "final_loss": float(loss.item())}


def _held_out_accuracy(net: RegionNet, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict:
    """``val_accuracy``, ``val_n`` and ``val_per_class`` (classes present in ``y``) of ``net`` on ``x``."""
    with torch.no_grad():
        pred = net(x).argmax(1)
    return {
        "val_accuracy": float((pred == y).float().mean()),
        "val_n": int(len(y)),
        "val_per_class": {c: float((pred[y == i] == i).float().mean()) for i, c in enumerate(classes) if (y == i).any()},
    }


def _save(out: Path, net: RegionNet, meta: dict) -> None:
    """The weights as ``out`` (safetensors) and ``meta`` as its JSON side file, each atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_json(out.with_suffix(".json"), meta)


def load_region_classifier(path: str | os.PathLike) -> RegionClassifier:
    """Load a classifier saved by :func:`train_region_classifier` (``.safetensors`` or its ``.json``)."""
    from safetensors.torch import load_file

    from eftclip.io import read_json

    path = Path(path)
    weights = path.with_suffix(".safetensors")
    side = path.with_suffix(".json")
    if not weights.is_file():
        raise EftclipError(f"{weights}: region classifier weights not found")
    meta = read_json(side)
    if meta.get("format") != FORMAT:
        raise EftclipError(f"{side}: not a region classifier side file (format {meta.get('format')!r})")
    cfg = RegionClassifierConfig(**{**meta["config"], "widths": tuple(meta["config"]["widths"])})
    with torch.random.fork_rng(devices=[]):
        net = RegionNet(len(meta["classnames"]), cfg.widths)
    try:
        net.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as exc:
        raise EftclipError(f"{weights}: weights do not match {side} ({exc})") from exc
    return RegionClassifier(net, meta["classnames"], cfg.input_size, meta)
