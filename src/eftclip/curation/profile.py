"""The label profile of the fine-tuning set (paper, section 4.5).

Rule (the paper only says unaffected labels come "at a lower ratio"; this is
the precise form used here):

- an *affected* label ``a`` (from Algorithm 2, with frequency ``f_a``, the
  shares summing to 1) gets weight ``f_a``;
- every *unaffected* vocabulary label gets weight ``R * min_a f_a``: ``R``
  times the share of the least frequent affected label.  With ``R`` in
  [0, 1] no unaffected label ever outweighs an affected one, and ``R = 0``
  draws affected labels only.  Trigger labels (``K``) count as unaffected:
  clean pictures of the target class help the model relearn it.
- quotas are ``size * weight / sum(weights)`` rounded by largest remainder so
  they add up to ``size`` exactly.

When no label was found affected (a clean model, or nothing flagged), all
labels get the same weight.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

from eftclip.errors import EftclipError


def read_affected_labels(path: str | os.PathLike) -> dict[str, int]:
    """Read ``affected_labels.csv`` (columns ``label,count,frequency``) as ``{label: count}``."""
    path = Path(path)
    if not path.exists():
        raise EftclipError(f"{path}: affected-label table not found (run `eftclip detect` first)")
    out: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"label", "count"} <= set(reader.fieldnames):
            raise EftclipError(f"{path}: expected columns 'label,count,frequency', got {reader.fieldnames}")
        for row_no, row in enumerate(reader, start=2):
            try:
                count = int(row["count"])
            except (TypeError, ValueError):
                raise EftclipError(f"{path}: row {row_no}: count {row['count']!r} is not an integer") from None
            if count < 0 or not row["label"]:
                raise EftclipError(f"{path}: row {row_no}: bad label or negative count")
            out[row["label"]] = out.get(row["label"], 0) + count
    return out


def label_weights(
    affected: Mapping[str, int], labels: Iterable[str], unaffected_ratio: float
) -> dict[str, float]:
    """Per-label weights (not normalised) by the rule in the module docstring.

    ``labels`` is every label that may be drawn (the vocabulary); affected
    labels missing from it are added.
    """
    if not (0.0 <= unaffected_ratio <= 1.0) or math.isnan(unaffected_ratio):
        raise EftclipError(f"--unaffected-ratio must lie in [0, 1], got {unaffected_ratio}")
    labels = list(dict.fromkeys(list(labels) + list(affected)))
    total = sum(n for n in affected.values() if n > 0)
    if total == 0:
        return {lab: 1.0 for lab in labels}
    freq = {lab: n / total for lab, n in affected.items() if n > 0}
    floor = unaffected_ratio * min(freq.values())
    return {lab: freq.get(lab, floor) for lab in labels}


def quotas(weights: Mapping[str, float], size: int) -> dict[str, int]:
    """Integer quotas proportional to ``weights`` summing to ``size`` (largest remainder, ties by label)."""
    if size < 0:
        raise EftclipError(f"--size must be positive, got {size}")
    positive = {lab: w for lab, w in weights.items() if w > 0}
    total = sum(positive.values())
    if not positive or size == 0:
        return {lab: 0 for lab in weights}
    exact = {lab: size * w / total for lab, w in positive.items()}
    out = {lab: int(math.floor(x)) for lab, x in exact.items()}
    left = size - sum(out.values())
    for lab in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:left]:
        out[lab] += 1
    return {lab: out.get(lab, 0) for lab in weights}
