"""Detection metrics against known poison flags, and the affected-label profile.

Rates are fractions in [0, 1]; a rate whose denominator is zero is ``None``
(never a made-up 0 or 1).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def detection_metrics(flagged: Sequence[bool], poisoned: Sequence[bool | None]) -> dict:
    """Confusion counts and rates of image flags against ground truth.

    ``poisoned[i]`` is True/False when known, ``None`` when not (such images
    are left out of every rate).  Returns ``detection_rate`` (recall of
    poisoned images: the paper's figure), ``precision``, ``false_positive_rate``
    (share of clean images flagged), ``f1`` and the counts.
    """
    if len(flagged) != len(poisoned):
        raise ValueError(f"{len(flagged)} flags but {len(poisoned)} truth values")
    tp = fp = fn = tn = unknown = 0
    for f, p in zip(flagged, poisoned):
        if p is None:
            unknown += 1
        elif p and f:
            tp += 1
        elif p:
            fn += 1
        elif f:
            fp += 1
        else:
            tn += 1
    recall = _rate(tp, tp + fn)
    precision = _rate(tp, tp + fp)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and (precision + recall) > 0
        else None
    )
    return {
        "n_flagged": int(sum(bool(f) for f in flagged)),
        "n_poisoned": tp + fn,
        "n_clean": fp + tn,
        "n_truth_unknown": unknown,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "detection_rate": recall,
        "precision": precision,
        "false_positive_rate": _rate(fp, fp + tn),
        "f1": f1,
    }


def affected_profile(per_image: Iterable[Iterable[str] | None]) -> list[dict]:
    """The frequency profile of affected labels: ``[{label, count, frequency}]``, most frequent first.

    ``count`` = number of images whose affected set holds the label;
    ``frequency`` = count / sum of all counts (the shares sum to 1).
    """
    counts: Counter[str] = Counter()
    for labels in per_image:
        if labels:
            counts.update(set(labels))
    return profile_from_counts(counts)


def profile_from_counts(counts: Mapping[str, int]) -> list[dict]:
    """``{label: count}`` as the profile rows of :func:`affected_profile`."""
    total = sum(counts.values())
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"label": lab, "count": int(n), "frequency": (n / total if total else 0.0)} for lab, n in rows]
