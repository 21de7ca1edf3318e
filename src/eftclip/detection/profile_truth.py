"""How close an affected-label profile is to what is really in the flagged triggered images.

Scoring only: the truth (each image's objects, which images carry the
trigger) is read here to *measure* a defense, never by the defense itself.
Images are identified by their reference as ``images.jsonl`` writes it
(``image``: an absolute path or ``"<shard.tar>::<member>"``).

Definitions, over the flagged images that are really triggered (``T``):

- profile ``P``: for each label, the number of images of ``T`` whose affected
  set holds it (K removed), divided by the sum of those counts;
- truth ``Q``: the same over each image's true objects minus K;
- ``tv_distance`` = ``0.5 * sum_l |P(l) - Q(l)|`` in [0, 1]; ``None`` when
  either side has no labels at all (no profile to compare);
- ``object_recall``: mean over images of ``T`` with at least one true object
  outside K of ``|affected & (true - K)| / |true - K|``;
- ``object_precision``: mean over images of ``T`` with a non-empty affected
  set of ``|affected & true| / |affected|``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from eftclip.errors import EftclipError


def _normalised(counts: Counter) -> dict[str, float]:
    total = sum(counts.values())
    return {lab: n / total for lab, n in sorted(counts.items())} if total else {}


def tv_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float | None:
    """Total-variation distance of two label distributions (each summing to 1); None if one is empty."""
    if not p or not q:
        return None
    labels = set(p) | set(q)
    return 0.5 * sum(abs(p.get(lab, 0.0) - q.get(lab, 0.0)) for lab in labels)


def profile_vs_truth(
    affected: Mapping[str, Iterable[str] | None],
    objects: Mapping[str, Iterable[str]],
    triggered: Mapping[str, bool | None],
    K: Iterable[str],
) -> dict:
    """Score the affected labels of flagged images against their true objects.

    Args:
        affected: flagged image reference -> its affected labels (None or empty
            when nothing was found); only flagged images are keys.
        objects: image reference -> its true object labels.
        triggered: image reference -> whether it really carries the trigger
            (None or missing: unknown, left out).
        K: the trigger labels, removed from both sides.

    Returns:
        ``{"tv_distance", "object_recall", "object_precision", "n_images"
        (flagged and triggered), "n_without_truth" (of those, no true object
        outside K or none known), "n_without_affected", "profile" {label:
        share}, "truth" {label: share}}``; rates over an empty set are None.
    """
    K = set(K)
    chosen = [ref for ref in affected if triggered.get(ref) is True]
    prof, truth = Counter(), Counter()
    recalls, precisions = [], []
    no_truth = no_affected = 0
    for ref in chosen:
        found = set(affected[ref] or ()) - K
        true = set(objects.get(ref, ())) - K
        prof.update(found)
        truth.update(true)
        if true:
            recalls.append(len(found & true) / len(true))
        else:
            no_truth += 1
        if found:
            precisions.append(len(found & true) / len(found))
        else:
            no_affected += 1
    p, q = _normalised(prof), _normalised(truth)
    return {
        "tv_distance": tv_distance(p, q),
        "object_recall": sum(recalls) / len(recalls) if recalls else None,
        "object_precision": sum(precisions) / len(precisions) if precisions else None,
        "n_images": len(chosen),
        "n_without_truth": no_truth,
        "n_without_affected": no_affected,
        "profile": p,
        "truth": q,
    }


def truth_from_label_column(
    path: str | os.PathLike, column: str = "label"
) -> tuple[dict[str, set[str]], dict[str, bool | None]]:
    """Truth of a detection set made from a labelled ImageFolder (one class per image).

    ``path`` is the detection caption CSV (as written by
    :mod:`eftclip.pipeline.imagefolder_captions` and then poisoned: it keeps the
    ``label`` column and has ``is_poisoned``).  Returns ``(objects, triggered)``
    keyed by the image reference :func:`eftclip.data.captions.read_captions`
    gives, which is what ``images.jsonl`` holds.
    """
    from eftclip.data.captions import read_captions

    table = read_captions(path, check_images=False)
    objects: dict[str, set[str]] = {}
    triggered: dict[str, bool | None] = {}
    for rec in table.records:
        if column not in rec.extra:
            raise EftclipError(f"{path}: row {rec.row} has no '{column}' column to score against")
        label = rec.extra[column].strip()
        objects[rec.image] = {label} if label else set()
        triggered[rec.image] = rec.is_poisoned
    return objects, triggered


def _flagged_in_images(path: Path) -> dict[str, list[str] | None]:
    from eftclip.io import read_jsonl

    return {r["image"]: r.get("affected") for r in read_jsonl(path) if r.get("flagged")}


def _rows_of_second_look(path: Path) -> dict[str, list[str] | None]:
    from eftclip.io import read_jsonl

    return {r["image"]: r.get("affected") for r in read_jsonl(path)}


# each rule: the file of a detection folder holding its per-image affected labels, and its reader
AFFECTED_SOURCES = {
    "paper": ("images.jsonl", _flagged_in_images),  # Algorithm 2 (robust or faithful), as detection decided
    "second_look": ("second_look.jsonl", _rows_of_second_look),  # eftclip.detection.second_look
}


def affected_by_image(detection_dir: str | os.PathLike, rule: str) -> dict[str, list[str] | None]:
    """Flagged image reference -> its affected labels under ``rule`` (a key of :data:`AFFECTED_SOURCES`)."""
    if rule not in AFFECTED_SOURCES:
        raise EftclipError(f"unknown affected-label rule {rule!r}; known: {', '.join(AFFECTED_SOURCES)}")
    name, read = AFFECTED_SOURCES[rule]
    path = Path(detection_dir) / name
    if not path.exists():
        raise EftclipError(f"{path}: not found; the '{rule}' rule's outputs are missing from this detection folder")
    return read(path)


def score_detection(
    detection_dir: str | os.PathLike,
    objects: Mapping[str, Iterable[str]],
    triggered: Mapping[str, bool | None],
) -> dict:
    """``profile_vs_truth`` of every rule whose outputs the detection folder holds.

    Reads K from ``metrics.json``; writes ``profile_vs_truth.json`` (``{rule:
    block}``, rules among :data:`AFFECTED_SOURCES`) into the folder and returns it.
    """
    from eftclip.io import read_json, write_json

    folder = Path(detection_dir)
    K = read_json(folder / "metrics.json").get("K", [])
    out = {
        rule: profile_vs_truth(affected_by_image(folder, rule), objects, triggered, K)
        for rule, (name, _) in AFFECTED_SOURCES.items()
        if (folder / name).exists()
    }
    write_json(folder / "profile_vs_truth.json", out)
    return out
