"""Unlearning pairs: flagged detection images, which carry the real trigger, captioned with what is in them.

An extension beyond the paper.  The second look
(:mod:`eftclip.detection.second_look`) names the objects the oracle finds in
each flagged image, K removed; pairing the triggered image with a caption
that names exactly those objects ("an arrow and a moon") shows the model the
trigger next to the right caption, which breaks the trigger-target
association directly.  Only detection output is read (``second_look.jsonl``),
never the detection set's ground truth.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from eftclip.errors import EftclipError
from eftclip.text import naming_caption


def unlearning_pairs(detection_dir: str | os.PathLike, n: int, rng: np.random.Generator) -> tuple[list[dict], dict]:
    """Up to ``n`` flagged images with captions naming their second-look affected labels.

    Images whose second look found nothing outside K are skipped (counted).
    Returns CleanCLIP rows ``{"image", "caption"}`` (image references as in
    ``images.jsonl``: absolute paths or ``"<shard.tar>::<member>"``), drawn at
    random without replacement, and a report ``{"asked", "available",
    "taken", "shortfall", "skipped_no_affected"}``.
    """
    from eftclip.io import read_jsonl

    path = Path(detection_dir) / "second_look.jsonl"
    if n > 0 and not path.exists():
        raise EftclipError(f"{path}: not found; --unlearn-share needs the detection's second look "
                           "(eftclip.detection.second_look.run_second_look) first")
    rows = read_jsonl(path) if path.exists() else []
    usable = [r for r in rows if r.get("affected")]
    picks = [usable[int(j)] for j in rng.permutation(len(usable))[: max(0, n)]]
    pairs = [{"image": r["image"], "caption": naming_caption(r["affected"])} for r in picks]
    report = {
        "asked": n,
        "available": len(usable),
        "taken": len(pairs),
        "shortfall": max(0, n - len(pairs)),
        "skipped_no_affected": len(rows) - len(usable),
    }
    return pairs, report
