"""Zero-shot classification with CLIP: clean accuracy (CA) and attack success rate (ASR).

A class's text embedding is the mean of its unit-normalised prompt
embeddings (one per template), renormalised, as in the CLIP paper and
open_clip's zero-shot classifier.  Images are classified by cosine
similarity to those embeddings.

For ASR the trigger is applied to each image at its native resolution,
before the model's preprocessing (resize, crop, normalise), with a
``numpy.random.Generator`` seeded from ``(seed, image index)``, so the
triggered set is the same whatever the batch size or worker count.
"""

from __future__ import annotations

import difflib
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from eftclip.errors import EftclipError
from eftclip.evaluation.metrics import attack_success_rate, nan_to_none, per_class_rates, predictions, topk_hits
from eftclip.guards import require_finite
from eftclip.precision import autocast_for, resolve_precision

# prompts per text-encoder batch in text_classifier
_TEXT_BATCH = 1024


def _prompt(template: str | Callable[[str], str], classname: str) -> str:
    # open_clip keeps templates as lambdas, eftclip.data as "{}" format strings
    return template(classname) if callable(template) else template.format(classname)


def _templates(templates: Sequence[str] | str) -> list:
    if isinstance(templates, str):
        from eftclip.data.zeroshot import load_templates

        return load_templates(templates)
    templates = list(templates)
    if not templates:
        raise EftclipError("no prompt templates given")
    return templates


@torch.no_grad()
def text_classifier(
    bundle,
    classnames: Sequence[str],
    templates: Sequence[str] | str,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Zero-shot class embeddings.

    Args:
        bundle: a :class:`eftclip.models.ClipBundle`.
        classnames: ``C`` display names.
        templates: ``T`` format strings with one ``{}`` (or callables, or a
            template-set spec for :func:`eftclip.data.zeroshot.load_templates`).
        device: where to compute; the model is moved there if needed.

    Returns:
        ``(C, D)`` float32 on ``device``, unit-norm rows: for each class the mean
        of its ``T`` unit prompt embeddings, renormalised.
    """
    templates = _templates(templates)
    if not classnames:
        raise EftclipError("no class names given")
    model = _model_on(bundle, device)
    prompts = [_prompt(t, c) for c in classnames for t in templates]
    chunks = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), _TEXT_BATCH):
            tokens = bundle.tokenizer(prompts[start:start + _TEXT_BATCH]).to(device)
            chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    finally:
        model.train(was_training)
    emb = torch.cat(chunks).reshape(len(classnames), len(templates), -1)
    require_finite(emb, f"{_model_label(bundle)}: text features")
    return F.normalize(emb.mean(dim=1), dim=-1)


def _model_label(bundle) -> str:
    # errors name the checkpoint file when there is one, else the architecture
    return str(getattr(bundle, "checkpoint", None) or getattr(bundle, "name", "the model"))


def _model_on(bundle, device) -> torch.nn.Module:
    model = bundle.model
    device = torch.device(device)
    current = next(model.parameters()).device
    if current.type != device.type or (device.index is not None and current.index != device.index):
        model.to(device)
    return model


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise EftclipError(f"images must be PIL images or HWC uint8 RGB arrays, got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


@torch.no_grad()
def image_features(
    bundle,
    images: Sequence[Any],
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Unit-norm image embeddings.

    Args:
        bundle: a :class:`eftclip.models.ClipBundle`.
        images: ``N`` PIL images (any mode; converted to RGB) or HWC uint8 RGB arrays, or a
            ``(N, 3, S, S)`` tensor of model inputs already resized and normalised.
        device: where to compute.
        batch_size: images per forward pass.

    Returns:
        ``(N, D)`` float32 on ``device``, unit-norm rows (``(0, D)`` for no images).
    """
    model = _model_on(bundle, device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            x = chunk if isinstance(chunk, torch.Tensor) else torch.stack([bundle.preprocess_val(_to_pil(im))
                                                                            for im in chunk])
            out.append(_encode(model, x.to(device)))
            require_finite(out[-1], f"{_model_label(bundle)}: image features")
    finally:
        model.train(was_training)
    if not out:
        dim = getattr(model.visual, "output_dim", None)
        if dim is None:  # towers without the attribute (timm): ask the model itself
            size = bundle.image_size
            with torch.no_grad():
                dim = _encode(model.eval(), torch.zeros(1, 3, size, size, device=device)).shape[1]
            model.train(was_training)
        return torch.zeros(0, int(dim), device=device)
    return torch.cat(out)


def _encode(model, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_image(x).float(), dim=-1)


def resolve_target(target: str, classnames: Sequence[str], folders: Sequence[str] | None = None) -> int:
    """Class index of the attack target ``target``.

    Matches a display name first, then a class folder name.  Anything else
    raises :class:`EftclipError` listing close matches or a few class names.
    """
    if target in classnames:
        return list(classnames).index(target)
    if folders is not None and target in folders:
        return list(folders).index(target)
    close = difflib.get_close_matches(target, list(classnames), n=5)
    listed = close or list(classnames[:10])
    more = "" if close or len(classnames) <= 10 else f", ... ({len(classnames)} in all)"
    raise EftclipError(
        f"target {target!r} is not one of the class names; "
        f"{'close ones' if close else 'they are'}: {', '.join(map(repr, listed))}{more}"
    )


class _EvalImages(torch.utils.data.Dataset):
    """Sample ``i`` -> (clean tensor, triggered tensor, triggered?, label)."""

    def __init__(self, dataset, preprocess, trigger, target_index, seed):
        self.dataset = dataset
        self.preprocess = preprocess
        self.trigger = trigger
        self.target_index = target_index
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def __getitem__(self, i: int):
        label = int(self.dataset.samples[i][1])
        image = _to_pil(self.dataset.load(i))
        clean = self.preprocess(image)
        # images of the target class are not triggered: they cannot count towards ASR
        if self.trigger is None or label == self.target_index:
            return clean, torch.zeros_like(clean), False, label
        rng = np.random.default_rng([self.seed, i])  # per image, independent of batching
        result = self.trigger.apply(np.asarray(image, dtype=np.uint8), rng)
        return clean, self.preprocess(Image.fromarray(result.image)), True, label


def _class_keys(classnames: Sequence[str], folders: Sequence[str]) -> list[str]:
    # ImageNet names some classes alike ("crane", "maillot"); keep per-class keys unique
    counts = Counter(classnames)
    return [name if counts[name] == 1 else f"{name} ({folder})" for name, folder in zip(classnames, folders)]


@dataclass(frozen=True)
class _Predictions:
    """Per-image zero-shot results over the ``n`` images of an evaluation set, in sample order."""

    true: np.ndarray  # (n,) int64 true class
    pred: np.ndarray  # (n,) int64 top-1 class of the clean image (-1: all scores NaN)
    hit1: np.ndarray  # (n,) bool: true class is the top-1
    hit5: np.ndarray  # (n,) bool: true class among the top-min(5, C)
    pred_trig: np.ndarray  # (n,) int64 top-1 class of the triggered image; -1: not triggered (none, or target class)

    @classmethod
    def empty(cls, n: int) -> "_Predictions":
        """Arrays for ``n`` images, filled batch by batch by :meth:`_Scorer.score`."""
        return cls(
            true=np.empty(n, dtype=np.int64),
            pred=np.empty(n, dtype=np.int64),
            hit1=np.zeros(n, dtype=bool),
            hit5=np.zeros(n, dtype=bool),
            pred_trig=np.full(n, -1, dtype=np.int64),
        )


@dataclass(frozen=True)
class _Scorer:
    """Classifies batches of :class:`_EvalImages` against the class embeddings."""

    bundle: Any  # the ClipBundle, named in error messages
    model: torch.nn.Module  # bundle.model on ``device``, in eval mode
    classifier: torch.Tensor  # (C, D) unit-norm class embeddings
    k5: int  # min(5, C)
    device: str | torch.device

    def score(self, batch, preds: _Predictions, pos: int) -> int:
        """Write a batch's results into ``preds`` from index ``pos`` on; return the batch's size."""
        clean, triggered, has_trigger, labels = batch
        b = labels.shape[0]
        sl = slice(pos, pos + b)
        feats = _encode(self.model, clean.to(self.device))
        require_finite(feats, f"{_model_label(self.bundle)}: image features")
        scores = feats @ self.classifier.T
        labels_np = labels.numpy()
        preds.true[sl] = labels_np
        preds.pred[sl] = predictions(scores)
        preds.hit1[sl] = topk_hits(scores, labels_np, 1)
        preds.hit5[sl] = topk_hits(scores, labels_np, self.k5)
        if has_trigger.any():
            rows = has_trigger.nonzero().squeeze(1)
            t_feats = _encode(self.model, triggered[rows].to(self.device))
            require_finite(t_feats, f"{_model_label(self.bundle)}: image features of triggered images")
            preds.pred_trig[pos + rows.numpy()] = predictions(t_feats @ self.classifier.T)
        return b


def _check_evaluation(dataset, trigger, target: str | None, batch_size: int) -> tuple[list[str], list[str], int | None]:
    """``(classnames, class folder names, target class index or None)`` of a valid evaluation request."""
    classnames = list(dataset.classnames)
    folders = list(getattr(dataset, "classes", classnames))
    if trigger is not None and target is None:
        raise EftclipError("an attack success rate needs the attack's target label (--target)")
    target_index = resolve_target(target, classnames, folders) if target is not None else None
    if batch_size < 1:
        raise EftclipError(f"batch size must be at least 1, not {batch_size}")
    if len(dataset.samples) == 0:
        raise EftclipError("the evaluation set holds no images")
    return classnames, folders, target_index


def _predict(bundle, dataset, classnames: list[str], templates, trigger, target_index: int | None, *, seed: int,
             batch_size: int, device, progress: bool, num_workers: int, precision: str) -> _Predictions:
    """Zero-shot results of every image of ``dataset``, clean and (when ``trigger``) triggered."""
    n = len(dataset.samples)
    model = _model_on(bundle, device)
    was_training = model.training
    model.eval()
    try:
        classifier = text_classifier(bundle, classnames, templates, device)
        scorer = _Scorer(bundle, model, classifier, min(5, len(classnames)), device)
        preds = _Predictions.empty(n)
        loader = torch.utils.data.DataLoader(
            _EvalImages(dataset, bundle.preprocess_val, trigger, target_index, seed),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
        )
        pos = 0
        autocast = autocast_for(resolve_precision(precision, device), device)
        with tqdm(total=n, desc="evaluate", unit="img", file=sys.stderr, disable=not progress) as bar, autocast():
            for batch in loader:
                b = scorer.score(batch, preds, pos)
                pos += b
                bar.update(b)
    finally:
        model.train(was_training)
    return preds


def _metrics(preds: _Predictions, classnames: list[str], folders: list[str], target_index: int | None,
             triggered: bool) -> dict[str, Any]:
    """The metrics dict :func:`evaluate` returns, from the per-image results."""
    asr = None
    n_asr = 0
    if triggered:
        n_asr = int((preds.true != target_index).sum())
        asr = nan_to_none(attack_success_rate(preds.pred_trig, preds.true, target_index))
    rows = per_class_rates(
        preds.pred, preds.true, len(classnames),
        pred_triggered=preds.pred_trig if triggered else None,
        target_index=target_index if triggered else None,
    )
    return {
        "n": len(preds.true),
        "ca_top1": float(preds.hit1.mean()),
        "ca_top5": float(preds.hit5.mean()),
        "asr": asr,
        "n_asr": n_asr,
        "target": classnames[target_index] if target_index is not None else None,
        "per_class": dict(zip(_class_keys(classnames, folders), rows)),
    }


@torch.no_grad()
def evaluate(
    bundle,
    dataset,
    *,
    templates: Sequence[str] | str,
    trigger=None,
    target: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_workers: int = 0,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Zero-shot clean accuracy and, with a trigger, attack success rate.

    Args:
        bundle: a :class:`eftclip.models.ClipBundle`.
        dataset: an :class:`eftclip.data.zeroshot.ImageFolderSet` (``classes``,
            ``classnames``, ``samples``, ``load(i)``).
        templates: prompt templates (list of ``"{}"`` format strings, or a spec).
        trigger: an :class:`eftclip.attacks.Trigger`, or None for CA only.
        target: the attack's target class (display or folder name); required
            with ``trigger``.
        seed: seeds the per-image trigger randomness (``(seed, index)``).
        batch_size: images per forward pass.
        device: where to compute; the model is moved there if needed.
        progress: show a tqdm bar on stderr.
        num_workers: DataLoader workers for image loading/triggering.
        precision: the image tower's arithmetic, as training's ``precision``
            (``auto``: bf16 on CUDA, fp32 on CPU; ``bf16`` on a CPU with native
            bf16); the text classifier stays fp32.

    Returns:
        ``{"n", "ca_top1", "ca_top5", "asr", "n_asr", "target", "per_class"}``:
        rates in [0, 1]; ``ca_top5`` is top-min(5, C); ``asr`` is None without
        a trigger, else the share of triggered images whose true class is not
        the target that are classified as the target (``n_asr`` of them);
        ``per_class`` maps each class name to ``{"ca_top1", "asr", "n"}``.
    """
    classnames, folders, target_index = _check_evaluation(dataset, trigger, target, batch_size)
    preds = _predict(bundle, dataset, classnames, templates, trigger, target_index, seed=seed,
                     batch_size=batch_size, device=device, progress=progress, num_workers=num_workers,
                     precision=precision)
    return _metrics(preds, classnames, folders, target_index, triggered=trigger is not None)
