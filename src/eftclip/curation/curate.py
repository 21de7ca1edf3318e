"""Draw the compact fine-tuning set from a clean pool (paper, section 4.5).

Steps of :func:`curate`:

1. read the detection's affected-label profile (``affected_labels.csv``, the
   paper's rule, or ``affected_labels_second_look.csv``, see
   :data:`PROFILE_FILES`), ``triggers.json`` and ``vocab.txt``; weights per
   label by :mod:`eftclip.curation.profile`;
2. label every pool item: from its caption (``label_by="caption"``: word
   match against the vocabulary, plural- and phrase-aware) or by a clean CLIP
   (``label_by="clip"``: its top-1 zero-shot label among the vocabulary);
3. :func:`select`: integer quotas summing to ``size``; each label draws its
   quota at random (``numpy.random.Generator``) from the not yet chosen pool
   items that carry it, scarcest label first; a label that runs short passes
   its shortfall on to the labels that still have items, in proportion to
   their weights; what no label can fill is drawn from the rest of the pool
   (``fill``) and reported;
4. optional pairs beyond the paper, part of ``size``: unlearning pairs
   (:mod:`eftclip.curation.unlearn`) and repair pairs (:func:`repair_pairs`);
   the pool supplies what they do not;
5. write ``finetune.csv`` (CleanCLIP layout: ``image,caption``) and
   ``manifest.json`` with the realised shares, plus ``config.yaml``.

Asking for more items than the pool holds is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from eftclip.curation.profile import label_weights, quotas, read_affected_labels
from eftclip.errors import EftclipError

LABEL_BY = ("caption", "clip")


@dataclass(frozen=True)
class _LabelDraws:
    """A draw of distinct pool items in progress: each label's items in a fixed random order, read once."""

    order: dict[str, list[int]]  # label -> its items' pool indices, shuffled once
    pos: dict[str, int]  # label -> how many of its ``order`` have been read
    chosen: set[int] = field(default_factory=set)  # pool indices drawn so far
    picks: list[int] = field(default_factory=list)  # the same, in draw order
    assigned: list[str | None] = field(default_factory=list)  # label each pick was drawn for; None = fill

    @classmethod
    def shuffled(cls, cands: dict[str, list[int]], rng: np.random.Generator) -> "_LabelDraws":
        """A fresh draw over ``cands`` (label -> pool indices); one permutation per label, in label order."""
        # a random order per label, fixed once, so draws are seeded and reproducible
        order = {lab: [idx[j] for j in rng.permutation(len(idx))] for lab, idx in sorted(cands.items())}
        return cls(order, {lab: 0 for lab in order})

    def add(self, i: int, lab: str | None) -> None:
        """Record pool item ``i`` as drawn for ``lab``."""
        self.chosen.add(i)
        self.picks.append(i)
        self.assigned.append(lab)

    def take(self, lab: str, k: int) -> int:
        """Draw up to ``k`` items not yet chosen from ``lab``'s order; return how many were drawn."""
        got = 0
        seq = self.order[lab]
        while got < k and self.pos[lab] < len(seq):
            i = seq[self.pos[lab]]
            self.pos[lab] += 1
            if i in self.chosen:
                continue
            self.add(i, lab)
            got += 1
        return got

    def available(self, lab: str) -> int:
        """How many of ``lab``'s items are still unread and not chosen."""
        return sum(1 for i in self.order[lab][self.pos[lab] :] if i not in self.chosen)


def _items_by_label(item_labels: Sequence[set[str]], weights: dict[str, float]) -> dict[str, list[int]]:
    """Label of ``weights`` -> indices (ascending) of the pool items that carry it."""
    cands: dict[str, list[int]] = {lab: [] for lab in weights}
    for i, labs in enumerate(item_labels):
        for lab in labs:
            if lab in cands:
                cands[lab].append(i)
    return cands


def _draw_quotas(draws: _LabelDraws, weights: dict[str, float],
                 initial: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Draw each label's quota, passing shortfalls on by weight; return ``(drawn, shortfall)`` per label."""
    drawn = {lab: 0 for lab in weights}
    shortfall = {lab: 0 for lab in weights}
    want = dict(initial)
    active = {lab for lab, w in weights.items() if w > 0}
    while True:
        missing = 0
        # scarcest first: labels with few items are served before others can take them
        for lab in sorted((lab for lab in want if want[lab] > 0), key=lambda lab: (draws.available(lab), lab)):
            got = draws.take(lab, want[lab])
            drawn[lab] += got
            if got < want[lab]:
                short = want[lab] - got
                if lab in initial and drawn[lab] < initial[lab]:
                    shortfall[lab] = initial[lab] - drawn[lab]
                missing += short
                active.discard(lab)
            want[lab] = 0
        active = {lab for lab in active if draws.available(lab) > 0}
        if missing == 0 or not active:
            return drawn, shortfall
        want = quotas({lab: weights[lab] for lab in sorted(active)}, missing)


def _select_report(weights: dict[str, float], initial: dict[str, int], drawn: dict[str, int],
                   shortfall: dict[str, int], cands: dict[str, list[int]], size: int, fill: int) -> dict:
    """:func:`select`'s report: ``{label: {weight, target_share, quota, drawn, share, shortfall, available}}``.

    Plus ``"_fill": {drawn, share}`` for the items drawn outside any label.
    """
    wsum = sum(weights.values()) or 1.0
    report = {
        lab: {
            "weight": weights[lab],
            "target_share": weights[lab] / wsum,
            "quota": initial.get(lab, 0),
            "drawn": drawn[lab],
            "share": drawn[lab] / size if size else 0.0,
            "shortfall": shortfall[lab],
            "available": len(cands[lab]),
        }
        for lab in weights
    }
    report["_fill"] = {"drawn": max(fill, 0), "share": max(fill, 0) / size if size else 0.0}
    return report


def select(
    item_labels: Sequence[set[str]],
    weights: dict[str, float],
    size: int,
    rng: np.random.Generator,
) -> tuple[list[int], list[str | None], dict]:
    """Choose ``size`` distinct pool items (0 allowed) following the label ``weights``.

    ``item_labels[i]`` is the set of labels of pool item ``i``.  Returns the
    chosen indices, the label each was drawn for (``None`` for fill), and a
    per-label report ``{label: {weight, target_share, quota, drawn, shortfall,
    available}}`` plus ``"_fill"`` (items drawn outside any label).
    """
    n = len(item_labels)
    if size > n:
        raise EftclipError(f"--size {size} is larger than the pool ({n} items)")
    if size < 0:
        raise EftclipError(f"cannot draw {size} pool items")
    cands = _items_by_label(item_labels, weights)
    draws = _LabelDraws.shuffled(cands, rng)
    initial = quotas(weights, size)
    drawn, shortfall = _draw_quotas(draws, weights, initial)
    fill = size - len(draws.picks)
    if fill > 0:
        rest = [i for i in rng.permutation(n).tolist() if i not in draws.chosen]
        for i in rest[:fill]:
            draws.add(i, None)
    return draws.picks, draws.assigned, _select_report(weights, initial, drawn, shortfall, cands, size, fill)


def label_pool_by_caption(captions: Sequence[str], vocab: Sequence[str]) -> list[set[str]]:
    """Labels of each caption: vocabulary words it mentions (plural- and phrase-aware)."""
    from eftclip.detection.vocab import LabelMatcher

    matcher = LabelMatcher(vocab)
    return [matcher.labels_in(c) for c in captions]


def label_pool_by_clip(
    records, vocab: Sequence[str], checkpoint: str | os.PathLike, *, device: str = "cpu", batch_size: int = 64
) -> list[set[str]]:
    """Labels of each pool image: a clean CLIP's top-1 zero-shot label among ``vocab``."""
    import torch
    from tqdm import tqdm

    from eftclip.data.captions import open_image
    from eftclip.evaluation.zeroshot import image_features, text_classifier
    from eftclip.models import load_checkpoint

    bundle = load_checkpoint(checkpoint, device=device)
    classifier = text_classifier(bundle, list(vocab), ["a photo of a {}."], device)
    out: list[set[str]] = []
    for start in tqdm(range(0, len(records), batch_size), desc="label pool by CLIP", unit="batch", leave=False):
        batch = records[start : start + batch_size]
        images = [open_image(r) for r in batch]
        with torch.no_grad():
            feats = image_features(bundle, images, device, batch_size)
        top = (feats @ classifier.T).argmax(dim=1).tolist()
        out.extend({vocab[j]} for j in top)
    return out


# which affected-label profile the pool draw follows: the file of the detection folder holding it
PROFILE_FILES = {
    "paper": "affected_labels.csv",  # the paper's rule (Algorithm 2 over CLIP's top-tau list), as detection wrote it
    "second_look": "affected_labels_second_look.csv",  # eftclip.detection.second_look (whole vocabulary asked)
}


def profile_file(detection_dir: Path, profile: str | None) -> tuple[str, Path]:
    """``(name, path)`` of the profile to follow; ``None``: the second look's when it exists, else the paper's."""
    if profile is None:
        profile = "second_look" if (detection_dir / PROFILE_FILES["second_look"]).exists() else "paper"
    if profile not in PROFILE_FILES:
        raise EftclipError(f"--profile must be one of {', '.join(PROFILE_FILES)}, not {profile!r}")
    return profile, detection_dir / PROFILE_FILES[profile]


def _detection_inputs(detection_dir: Path, vocab: Sequence[str] | None, profile: str | None):
    """``(profile name, {label: count}, K, vocabulary)`` read from a detection folder."""
    from eftclip.detection.vocab import load_vocab
    from eftclip.io import read_json

    if not detection_dir.is_dir():
        raise EftclipError(f"{detection_dir}: detection folder not found")
    name, path = profile_file(detection_dir, profile)
    affected = read_affected_labels(path)
    triggers_path = detection_dir / "triggers.json"
    K = list(read_json(triggers_path).get("K", [])) if triggers_path.exists() else []
    if vocab is None:
        vpath = detection_dir / "vocab.txt"
        if not vpath.exists():
            raise EftclipError(f"{vpath}: the detection folder holds no vocabulary; pass one")
        vocab = load_vocab(vpath)
    return name, affected, K, list(vocab)


def _check_options(label_by: str, clip_checkpoint, repair_share: float, unlearn_share: float) -> None:
    if label_by not in LABEL_BY:
        raise EftclipError(f"--label-by must be one of {LABEL_BY}, not {label_by!r}")
    if label_by == "clip" and clip_checkpoint is None:
        raise EftclipError("--label-by clip needs --clip-checkpoint (a clean CLIP)")
    if not 0 <= repair_share <= 1:
        raise EftclipError(f"--repair-share must be in [0, 1], got {repair_share}")
    if not 0 <= unlearn_share <= 1:
        raise EftclipError(f"--unlearn-share must be in [0, 1], got {unlearn_share}")
    if repair_share + unlearn_share > 1:
        raise EftclipError(f"--repair-share {repair_share} and --unlearn-share {unlearn_share} add up to more than 1")


@dataclass(frozen=True)
class _Curation:
    """The settings of one curation, as ``config.yaml`` records them (``profile`` resolved)."""

    detection_dir: Path
    pool: str | os.PathLike
    size: int
    unaffected_ratio: float
    seed: int
    label_by: str
    profile: str  # a key of PROFILE_FILES
    repair_share: float
    unlearn_share: float
    clip_checkpoint: str | os.PathLike | None

    def config(self) -> dict:
        """The content of ``config.yaml``."""
        return {"detection_dir": str(self.detection_dir), "pool": str(self.pool), "size": self.size,
                "unaffected_ratio": self.unaffected_ratio, "seed": self.seed, "label_by": self.label_by,
                "profile": self.profile, "repair_share": self.repair_share, "unlearn_share": self.unlearn_share,
                "clip_checkpoint": None if self.clip_checkpoint is None else str(self.clip_checkpoint)}


@dataclass(frozen=True)
class _Pairs:
    """The pairs of a curated set: pool items, then repair pairs, then unlearning pairs."""

    picks: list[int]  # pool positions drawn by select
    assigned: list[str | None]  # the label each pick was drawn for; None = fill
    report: dict  # select's per-label report
    repair: list[dict]  # CleanCLIP rows {"image", "caption"}
    unlearn: list[dict]  # CleanCLIP rows {"image", "caption"}
    unlearn_report: dict  # unlearning_pairs' report

    def rows(self, records) -> list[dict]:
        """The ``finetune.csv`` rows ``{"image", "caption"}``, pool pairs first."""
        pool_rows = [{"image": records[i].image, "caption": records[i].caption} for i in self.picks]
        return pool_rows + self.repair + self.unlearn


def _read_pool(pool: str | os.PathLike, size: int):
    """The pool's :class:`~eftclip.data.captions.CaptionTable`; raises when empty or smaller than ``size``."""
    from eftclip.data.captions import read_captions

    table = read_captions(pool)
    if not table.records:
        raise EftclipError(f"{pool}: the pool holds no usable rows")
    if size > len(table.records):
        raise EftclipError(f"--size {size} is larger than the pool {pool} ({len(table.records)} items)")
    return table


def _label_pool(records, labels: list[str], label_by: str, clip_checkpoint, device: str) -> list[set[str]]:
    """The labels (among ``labels``) of each pool item, by its caption or by a clean CLIP."""
    if label_by == "caption":
        return label_pool_by_caption([r.caption for r in records], labels)
    return label_pool_by_clip(records, labels, clip_checkpoint, device=device)


def _draw_pairs(run: _Curation, records, item_labels: list[set[str]], weights: dict[str, float]) -> _Pairs:
    """Repair pairs, unlearning pairs, then the pool draw for the rest of ``run.size``."""
    from eftclip.curation.unlearn import unlearning_pairs

    rng = np.random.default_rng(run.seed)
    styled: dict[frozenset, list[str]] = {}
    for rec, labs in zip(records, item_labels):
        styled.setdefault(frozenset(labs), []).append(rec.caption)
    repair = repair_pairs(run.detection_dir, int(round(run.repair_share * run.size)), rng,
                          pool_captions=styled) if run.repair_share else []
    # its own stream: the pool draw is the same whether or not unlearning pairs are asked for
    unlearn, unlearn_report = unlearning_pairs(run.detection_dir, int(round(run.unlearn_share * run.size)),
                                               np.random.default_rng([run.seed, 1]))
    picks, assigned, report = select(item_labels, weights, run.size - len(repair) - len(unlearn), rng)
    return _Pairs(picks, assigned, report, repair, unlearn, unlearn_report)


def _manifest(run: _Curation, table, item_labels: list[set[str]], affected: dict[str, int], K: list,
              pairs: _Pairs) -> dict:
    """The content of ``manifest.json`` (without the CSV's path, which :func:`_write_set` puts first)."""
    records = table.records
    manifest = {
        "size": run.size, "pool": str(run.pool), "pool_size": len(records), "pool_skipped": len(table.skipped),
        "pool_unlabelled": sum(1 for labs in item_labels if not labs), "unaffected_ratio": run.unaffected_ratio,
        "rule": "affected label: weight = its frequency; unaffected label: weight = R * lowest affected frequency",
        "profile": run.profile, "profile_file": PROFILE_FILES[run.profile], "label_by": run.label_by,
        "seed": run.seed, "affected": sorted(affected), "triggers": K,
    }
    manifest.update(_draw_report(pairs.report, pairs.picks, item_labels, records))
    manifest.update({
        "repair_share": run.repair_share, "repair_pairs": len(pairs.repair),
        "repair_rule": "flagged detection images captioned with the oracle's affected labels (S_i minus K): "
                       "a pool caption naming exactly those labels, else a template",
        "unlearn_share": run.unlearn_share, "unlearn_pairs": len(pairs.unlearn), "unlearn": pairs.unlearn_report,
        "unlearn_rule": "flagged detection images captioned with the labels the second look found there, minus K",
        "pool_pairs": len(pairs.picks), "drawn_for": pairs.assigned,
    })
    return manifest


def curate(
    detection_dir: str | os.PathLike,
    pool: str | os.PathLike,
    *,
    size: int,
    unaffected_ratio: float,
    out: str | os.PathLike,
    seed: int = 0,
    label_by: str = "caption",
    clip_checkpoint: str | os.PathLike | None = None,
    vocab: Sequence[str] | None = None,
    device: str = "cpu",
    repair_share: float = 0.0,
    unlearn_share: float = 0.0,
    profile: str | None = None,
) -> dict:
    """Build the fine-tuning set; returns the manifest (also written to ``out/manifest.json``).

    ``detection_dir`` is the output folder of ``eftclip detect``; ``pool`` a
    caption CSV/TSV (or webdataset) of clean image-text pairs; ``size`` the
    number of pairs; ``unaffected_ratio`` R in [0, 1] (see
    :mod:`eftclip.curation.profile`); ``vocab`` overrides the detection's
    vocabulary.  ``profile``: the affected-label profile the pool draw follows,
    a key of :data:`PROFILE_FILES` (``"paper"``, ``"second_look"``); None = the
    second look's when the folder holds one, else the paper's.

    ``unlearn_share`` (beyond the paper, 0 = off): that share of the ``size``
    pairs are flagged detection images captioned with the objects the second
    look found there (:mod:`eftclip.curation.unlearn`); when fewer qualify, the
    shortfall is drawn from the pool (reported under ``unlearn``).

    ``repair_share`` (beyond the paper, off by default): a share of the pairs
    from flagged images captioned with the paper's rule's affected labels
    (``S_i`` minus K; see :func:`repair_pairs`).  Both kinds of pairs are part
    of ``size``, never added to it; only detection output is used, never the
    detection set's ground truth.
    """
    detection_dir, out = Path(detection_dir), Path(out)
    if size < 1:
        raise EftclipError(f"--size must be at least 1, got {size}")
    _check_options(label_by, clip_checkpoint, repair_share, unlearn_share)
    profile, affected, K, vocab = _detection_inputs(detection_dir, vocab, profile)
    weights = label_weights(affected, vocab, unaffected_ratio)
    table = _read_pool(pool, size)
    records = list(table.records)
    item_labels = _label_pool(records, list(weights), label_by, clip_checkpoint, device)

    run = _Curation(detection_dir, pool, size, unaffected_ratio, seed, label_by, profile, repair_share, unlearn_share,
                    clip_checkpoint)
    pairs = _draw_pairs(run, records, item_labels, weights)
    return _write_set(out, pairs.rows(records), _manifest(run, table, item_labels, affected, K, pairs), run.config())


def _draw_report(report: dict, picks: list[int], item_labels: Sequence[set[str]], records) -> dict:
    """The manifest's per-label part: realised shares, coverage, fill, shortfalls and the chosen keys."""
    coverage: dict[str, int] = {}
    for i in picks:
        for lab in item_labels[i]:
            coverage[lab] = coverage.get(lab, 0) + 1
    return {
        "labels": {lab: {**r, "coverage": coverage.get(lab, 0)} for lab, r in report.items() if lab != "_fill"},
        "fill": report["_fill"],
        "shortfalls": {lab: r["shortfall"] for lab, r in report.items() if lab != "_fill" and r["shortfall"]},
        "keys": [records[i].key for i in picks],
    }


def _write_set(out: Path, rows: list[dict], manifest: dict, config: dict) -> dict:
    """Write ``finetune.csv``, ``manifest.json`` (with the CSV's path first) and ``config.yaml``; return the manifest."""
    from eftclip.config import write_config
    from eftclip.data.captions import write_captions_csv
    from eftclip.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "finetune.csv"
    write_captions_csv(csv_path, rows, ["image", "caption"])
    manifest = {"csv": str(csv_path), **manifest}
    write_json(out / "manifest.json", manifest)
    write_config(out / "config.yaml", config)
    return manifest


def repair_pairs(detection_dir: Path, n: int, rng: np.random.Generator,
                 templates: Sequence[str] = ("a photo of {}.", "a picture of {}.", "an image of {}."),
                 pool_captions: dict[frozenset, list[str]] | None = None) -> list[dict]:
    """Up to ``n`` flagged images of a detection run, captioned with their affected labels.

    Reads ``images.jsonl`` (the per-image decisions); an image qualifies when it
    was flagged and the oracle confirmed at least one non-trigger object there.
    The caption is borrowed from ``pool_captions`` (``{frozenset(labels): [captions]}``)
    when the pool has one naming exactly those labels, so the repair pairs read like the
    rest of the data (measured on the world: template captions, which share the zero-shot
    prompts' phrasing, cost 8 more CA points); otherwise a template names them.
    Returns CleanCLIP rows ``{"image", "caption"}``; fewer than ``n`` when fewer qualify.
    """
    from eftclip.io import read_jsonl
    from eftclip.text import article

    records = [r for r in read_jsonl(Path(detection_dir) / "images.jsonl") if r.get("flagged") and r.get("affected")]
    chosen = rng.permutation(len(records))[:n]
    rows = []
    for j in chosen:
        rec = records[int(j)]
        labels = list(rec["affected"])[:3]
        borrowed = (pool_captions or {}).get(frozenset(labels))
        if borrowed:
            caption = borrowed[int(rng.integers(len(borrowed)))]
        else:
            phrase = " and ".join(article(lab) for lab in labels)
            caption = templates[int(rng.integers(len(templates)))].format(phrase)
        rows.append({"image": rec["image"], "caption": caption})
    return rows
