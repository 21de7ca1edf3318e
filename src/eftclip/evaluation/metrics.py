"""Classification metrics: top-k accuracy and attack success rate.

Inputs are 1-D integer class indices (``numpy`` arrays, torch tensors or
lists) and, for top-k, scores ``(N, C)`` (logits or similarities; only their
order matters).  Rates are fractions in [0, 1]; a rate over an empty set is
``nan`` (callers that write JSON turn it into ``None``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch


def _as_int_array(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_scores(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {arr.shape}")
    return arr


def topk_hits(scores: Any, true: Any, k: int = 1) -> np.ndarray:
    """Whether each sample's true class is among its ``k`` highest scores.

    Args:
        scores: ``(N, C)`` logits or similarities.
        true: ``(N,)`` true class indices in ``[0, C)``.
        k: clipped to ``C`` (top-5 of a 3-class problem is top-3).

    Returns:
        ``(N,)`` bool.  Ties are broken by class index (lower first), so the
        result does not depend on the sort algorithm.  A NaN score is never a
        hit: a sample whose true-class score is NaN misses, and a NaN score of
        another class ranks below every number (so it cannot push the true
        class out, nor let it in by failing every comparison).
    """
    s = _as_scores(scores)
    t = _as_int_array(true, "true labels")
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"scores have {s.shape[0]} rows but there are {t.shape[0]} labels")
    n, c = s.shape
    if n and (t.min() < 0 or t.max() >= c):
        raise ValueError(f"true labels must lie in [0, {c}), got range [{t.min()}, {t.max()}]")
    k = max(1, min(int(k), c))
    true_score = s[np.arange(n), t]
    # a NaN of another class never beats nor ties (its comparisons are False); a NaN true score is masked below
    # rank of the true class = how many classes beat it (strictly higher, or equal with a lower index)
    higher = (s > true_score[:, None]).sum(axis=1)
    tied_before = ((s == true_score[:, None]) & (np.arange(c)[None, :] < t[:, None])).sum(axis=1)
    # every comparison with a NaN true score is False, so it would rank first: it is a miss instead
    return ((higher + tied_before) < k) & ~np.isnan(true_score)


def predictions(scores: Any) -> np.ndarray:
    """Top-1 class of each row of ``scores (N, C)``; NaN scores rank last, a row of only NaN predicts -1.

    ``argmax`` picks a NaN as the maximum, so a broken model would "predict"
    whatever class first turned NaN; -1 matches no class, so every metric
    counts it as a miss (never as a correct answer or an attack success).
    """
    s = _as_scores(scores)
    if s.shape[1] == 0:
        return np.full(s.shape[0], -1, dtype=np.int64)
    nan = np.isnan(s)
    pred = np.where(nan, -np.inf, s).argmax(axis=1).astype(np.int64)
    pred[nan.all(axis=1)] = -1
    return pred


def topk_accuracy(scores: Any, true: Any, k: int = 1) -> float:
    """Share of samples whose true class is among their top ``k`` scores (``nan`` when N = 0)."""
    hits = topk_hits(scores, true, k)
    return float(hits.mean()) if hits.size else math.nan


def accuracy(pred: Any, true: Any) -> float:
    """Share of ``pred == true`` over 1-D class indices (``nan`` when empty)."""
    p = _as_int_array(pred, "predictions")
    t = _as_int_array(true, "true labels")
    if p.shape != t.shape:
        raise ValueError(f"{p.shape[0]} predictions for {t.shape[0]} labels")
    return float((p == t).mean()) if p.size else math.nan


def attack_success_rate(pred_triggered: Any, true: Any, target_index: int) -> float:
    """Share of triggered images predicted as the attack's target class.

    Only images whose TRUE class is not the target count: an image of the
    target class predicted as the target is a correct answer, not a
    successful attack.  Success is measured against ``target_index``, never
    against the true label (a prediction that merely leaves the true class is
    misclassification, not a backdoor hit).

    Args:
        pred_triggered: ``(N,)`` predicted class of each triggered image;
            entries of target-class images are ignored (any value, e.g. -1).
        true: ``(N,)`` true class indices.
        target_index: class index of the attack's target label.

    Returns:
        The rate in [0, 1]; ``nan`` when no image has a non-target true class.
    """
    p = _as_int_array(pred_triggered, "triggered predictions")
    t = _as_int_array(true, "true labels")
    if p.shape != t.shape:
        raise ValueError(f"{p.shape[0]} triggered predictions for {t.shape[0]} labels")
    counted = t != int(target_index)
    if not counted.any():
        return math.nan
    return float((p[counted] == int(target_index)).mean())


def per_class_rates(
    pred_clean: Any,
    true: Any,
    num_classes: int,
    *,
    pred_triggered: Any | None = None,
    target_index: int | None = None,
) -> list[dict[str, float | int | None]]:
    """Per-class clean top-1 accuracy, ASR and sample count.

    Returns one dict per class index ``c`` in ``[0, num_classes)``:
    ``{"ca_top1", "asr", "n"}``; ``ca_top1`` is None for a class without
    samples, ``asr`` is None without a trigger and for the target class itself
    (see :func:`attack_success_rate`).
    """
    p = _as_int_array(pred_clean, "predictions")
    t = _as_int_array(true, "true labels")
    if p.shape != t.shape:
        raise ValueError(f"{p.shape[0]} predictions for {t.shape[0]} labels")
    pt = None if pred_triggered is None else _as_int_array(pred_triggered, "triggered predictions")
    if pt is not None and pt.shape != t.shape:
        raise ValueError(f"{pt.shape[0]} triggered predictions for {t.shape[0]} labels")
    counts = np.bincount(t, minlength=num_classes)
    correct = np.bincount(t[p == t], minlength=num_classes)
    hits = None
    if pt is not None and target_index is not None:
        hits = np.bincount(t[pt == int(target_index)], minlength=num_classes)
    out: list[dict[str, float | int | None]] = []
    for c in range(num_classes):
        n = int(counts[c])
        asr = None
        if hits is not None and c != target_index and n:
            asr = float(hits[c] / n)
        out.append({"ca_top1": float(correct[c] / n) if n else None, "asr": asr, "n": n})
    return out


def nan_to_none(value: float | None) -> float | None:
    """``None`` for ``nan`` (JSON has no NaN), the float otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


__all__: Sequence[str] = [
    "accuracy",
    "attack_success_rate",
    "nan_to_none",
    "per_class_rates",
    "predictions",
    "topk_accuracy",
    "topk_hits",
]
