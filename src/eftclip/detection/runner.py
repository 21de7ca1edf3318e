"""Detection over a dataset: the poisoned CLIP's lists, the oracle's finds, then Algorithms 1 and 2.

Two passes, one model pass:

**Pass 1** (models; streaming, resumable, sharded).  For each image ``I_i``,
in batches: CLIP ranks the vocabulary (``clip`` = top ``prompt_tau`` labels
with probabilities); the oracle is prompted with that list (``find_batch``)
and *every* find it returns is kept with its score and box (no threshold
yet); each find's box is cropped and re-scored by the same CLIP in batches
(``crop`` = its top label).  One JSON line per image is appended to
``images.jsonl`` as soon as its batch is done (``images.rank{r}.jsonl`` for
rank ``r`` under torchrun, ``RANK``/``WORLD_SIZE``: rank ``r`` takes images
``i % world == r``; rank 0 waits for the others' ``rank{r}.done`` markers and
merges).  A killed run resumes: the log is repaired (torn last line dropped)
and images already in it are skipped.

**Pass 2** (no model; :func:`decide`).  From the stored records, for the
chosen ``tau`` and ``theta``: ``L_i`` = top-``tau`` labels, ``S_i`` = labels
of ``L_i`` with a find scoring ``>= theta``, ``R_i`` = crop labels of those
finds.  Then both modes of :mod:`eftclip.detection.algorithms`, faithful
(Algorithms 2 then 1 per image, in dataset order) and robust (evidence, ``K``,
flags, affected labels), are computed; the chosen ``mode`` (and
``flag_rule``) decides what goes into ``triggers.json``,
``affected_labels.csv``, the ``flagged``/``why`` fields of ``images.jsonl``
and the headline of ``metrics.json``; the other modes are reported beside it
so they can be compared.  A theta or tau sweep re-runs pass 2 only
(``tau`` up to ``prompt_tau``).

Outputs in ``out``: ``config.yaml`` and ``run.json`` (resolved settings),
``vocab.txt``, ``images.jsonl``, ``triggers.json``, ``affected_labels.csv``,
``metrics.json``, ``figure7.png``.  An ``out`` that holds a run made with
other settings is refused unless ``resume`` (keep the per-image records; only
allowed when the pass-1 settings match) or ``force`` (start over).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from eftclip.detection.algorithms import (
    FLAG_RULES,
    affected_labels,
    find_adversarial_trigger,
    flag_image,
    gather_evidence,
    potential_triggers,
    robust_affected,
    robust_triggers,
)
from eftclip.detection.metrics import detection_metrics, profile_from_counts
from eftclip.errors import EftclipError

MODES = ("robust", "faithful")
ON_ERROR = ("skip", "fail")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class DetectConfig:
    """Settings of one detection run (``eftclip detect``)."""

    checkpoint: str  # the suspect (poisoned) CLIP: .safetensors with its JSON side file
    images: str  # a caption CSV/TSV/webdataset (key, image, caption, is_poisoned) or a folder of images
    out: str  # output folder
    vocab: str = "mined"  # a label file (.txt / .json), or "mined" (nouns of the captions)
    labels: tuple[str, ...] = ()  # labels always added to the vocabulary (e.g. the suspected target)
    vocab_size: int = 200  # "mined": at most this many labels
    vocab_min_count: int = 3  # "mined": a word must occur in at least this many captions
    oracle: str = "reference"  # oracle backend name (eftclip.oracles.ORACLES)
    oracle_args: dict = field(default_factory=dict)  # keyword arguments for the oracle's constructor
    tau: int = 5  # length of CLIP's label list L_i (and of the oracle's prompt)
    prompt_tau: int | None = None  # prompt the oracle with this many labels (>= tau) so tau sweeps need no model pass; None = tau
    theta: float = 0.66  # oracle confidence threshold in [0, 1]
    mode: str = "robust"  # "robust" or "faithful" (the paper's rules as written)
    flag_rule: str = "top1"  # robust: a trigger of K flags an image at rank 1 ("top1") or anywhere in L_i ("topk")
    evidence: str = "top1"  # robust: count a label as ranked only at rank 1 ("top1") or wherever in L_i ("topk")
    min_share: float = 0.66  # robust: q, share of images where ranked that leave the label unconfirmed
    min_count: int = 5  # robust: m, least number of judged images for a label to enter K
    target: str | None = None  # the true attack target, when known (metrics: is it in K)
    templates: tuple[str, ...] = ("a photo of a {}.",)  # prompt templates for CLIP's text classifier
    crop_pad: float = 0.0  # grow each oracle box by this fraction of its size before cropping
    batch_size: int = 32  # images per batch (CLIP, oracle, and crops re-scored)
    device: str = "cpu"  # torch device for CLIP
    on_error: str = "skip"  # an image that fails to load: "skip" (counted) or "fail"
    max_images: int | None = None  # only the first N images (quick looks)
    figure_n: int = 5  # images in figure7.png
    resume: bool = False  # keep the records of a run made with other pass-2 settings
    force: bool = False  # discard whatever run is in `out` and start over
    merge_timeout_s: float = 86400.0  # rank 0 waits this long for the other ranks to finish


@dataclass(frozen=True)
class DecideParams:
    """The pass-2 settings (no model needed to change them)."""

    tau: int = 5  # length of L_i
    theta: float = 0.66  # oracle confidence threshold
    mode: str = "robust"  # "robust" | "faithful"
    flag_rule: str = "top1"  # robust flag rule
    evidence: str = "top1"  # robust evidence counting (rank 1 only, or "topk")
    min_share: float = 0.66  # robust q
    min_count: int = 5  # robust m
    target: str | None = None  # true target, when known


@dataclass(frozen=True)
class ImageItem:
    """One image to examine."""

    key: str  # unique id (the caption table's key, or the path relative to the folder)
    ref: str  # where it lives (path, or "<shard.tar>::<member>"), written to the outputs
    is_poisoned: bool | None  # ground truth when the table has an is_poisoned column
    caption: str | None  # its caption, when there is one
    load: Callable[[], Any] = field(compare=False, repr=False)  # () -> PIL RGB image


# --------------------------------------------------------------------------- validation


def check_params(p: DecideParams, vocab_size: int | None = None, prompt_tau: int | None = None) -> None:
    """Raise EftclipError naming the flag for any out-of-range pass-2 setting."""
    if p.mode not in MODES:
        raise EftclipError(f"--mode must be one of {MODES}, not {p.mode!r}")
    if p.flag_rule not in FLAG_RULES:
        raise EftclipError(f"--flag-rule must be one of {FLAG_RULES}, not {p.flag_rule!r}")
    if p.evidence not in FLAG_RULES:
        raise EftclipError(f"--evidence must be one of {FLAG_RULES}, not {p.evidence!r}")
    if not isinstance(p.tau, int) or p.tau < 1:
        raise EftclipError(f"--tau must be a positive integer, got {p.tau!r}")
    if vocab_size is not None and p.tau > vocab_size:
        raise EftclipError(f"--tau {p.tau} is larger than the vocabulary ({vocab_size} labels)")
    if prompt_tau is not None and p.tau > prompt_tau:
        raise EftclipError(f"--tau {p.tau} is larger than the stored list length (prompt tau {prompt_tau})")
    if not (0.0 <= float(p.theta) <= 1.0):
        raise EftclipError(f"--theta must lie in [0, 1], got {p.theta}")
    if not (0.0 <= float(p.min_share) <= 1.0):
        raise EftclipError(f"--min-share must lie in [0, 1], got {p.min_share}")
    if int(p.min_count) < 1:
        raise EftclipError(f"--min-count must be at least 1, got {p.min_count}")


def params_of(cfg: DetectConfig) -> DecideParams:
    return DecideParams(
        tau=cfg.tau,
        theta=cfg.theta,
        mode=cfg.mode,
        flag_rule=cfg.flag_rule,
        evidence=cfg.evidence,
        min_share=cfg.min_share,
        min_count=cfg.min_count,
        target=cfg.target,
    )


# --------------------------------------------------------------------------- image sources


def list_images(spec: str | os.PathLike, *, on_error: str = "skip") -> tuple[list[ImageItem], list[dict]]:
    """The images of a caption table or a folder, and the rows that could not be read.

    A folder is walked recursively for image files (sorted; key = relative
    path, no ground truth).  Anything else is read with
    ``eftclip.data.captions.read_captions`` (``is_poisoned`` and captions kept).
    """
    path = Path(spec)
    if path.is_dir() and not any(path.glob("*.tar")):
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EftclipError(f"{path}: no image files found in the folder")
        items = [
            ImageItem(p.relative_to(path).as_posix(), str(p), None, None, _file_loader(p)) for p in files
        ]
        return items, []
    from eftclip.data.captions import open_image, read_captions

    table = read_captions(spec, on_error=on_error, check_images=False)
    items = [
        ImageItem(r.key, r.image, r.is_poisoned, r.caption, _record_loader(open_image, r)) for r in table.records
    ]
    skipped = [{"source": s.source, "row": s.row, "reason": s.reason} for s in table.skipped]
    if not items:
        raise EftclipError(f"{spec}: no usable rows")
    return items, skipped


def _file_loader(path: Path):
    def load():
        from PIL import Image

        with Image.open(path) as im:
            return im.convert("RGB")

    return load


def _record_loader(open_image, record):
    return lambda: open_image(record)


def resolve_vocab(cfg: DetectConfig, items: Sequence[ImageItem]) -> list[str]:
    """The vocabulary of the run, the user's labels (and the target) always included."""
    from eftclip.detection.vocab import load_vocab, mine_vocab

    extra = list(cfg.labels) + ([cfg.target] if cfg.target else [])
    if cfg.vocab == "mined":
        captions = [it.caption for it in items if it.caption]
        if not captions:
            raise EftclipError(f"--vocab mined needs captions, and {cfg.images} has none; pass --vocab FILE")
        return mine_vocab(captions, min_count=cfg.vocab_min_count, max_size=cfg.vocab_size, extra=extra)
    return load_vocab(cfg.vocab, extra=extra)


# --------------------------------------------------------------------------- pass 1


class ClipScorer:
    """The poisoned CLIP as a ranker of vocabulary labels, for whole images and for crops."""

    def __init__(self, bundle, vocab: Sequence[str], templates: Sequence[str], device: str, batch_size: int):
        import torch

        from eftclip.evaluation.zeroshot import text_classifier

        # crops are small and many: score them in larger batches than whole images
        self.bundle, self.vocab, self.device = bundle, list(vocab), device
        self.batch_size = max(int(batch_size), 64)
        with torch.no_grad():
            self.classifier = text_classifier(bundle, self.vocab, list(templates), device)  # (C, D)
            scale = getattr(bundle.model, "logit_scale", None)
            self.scale = float(scale.exp()) if scale is not None else 100.0

    def rank(self, images: Sequence[Any], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(label, probability)`` per PIL image, best first (probabilities over the vocabulary)."""
        import torch

        from eftclip.evaluation.zeroshot import image_features

        if not images:
            return []
        with torch.no_grad():
            feats = image_features(self.bundle, list(images), self.device, self.batch_size)  # (N, D)
            probs = (self.scale * feats.to(self.classifier) @ self.classifier.T).softmax(dim=-1)
            top = probs.topk(min(k, len(self.vocab)), dim=-1)
        vals, idx = top.values.cpu().tolist(), top.indices.cpu().tolist()
        return [[(self.vocab[j], round(float(v), 6)) for v, j in zip(vs, js)] for vs, js in zip(vals, idx)]


def examine_batch(
    batch: Sequence[tuple[int, ImageItem, Any]],
    scorer: ClipScorer,
    oracle,
    prompt_tau: int,
    crop_pad: float = 0.0,
) -> list[dict]:
    """Pass-1 records for a batch of ``(index, item, PIL image)``: CLIP's list, the oracle's finds, crop labels."""
    from PIL import Image

    from eftclip.oracles.base import extract_crops

    pils = [im for _, _, im in batch]
    arrays = [np.asarray(im, dtype=np.uint8) for im in pils]
    ranked = scorer.rank(pils, prompt_tau)
    results = oracle.find_batch(arrays, [[lab for lab, _ in r] for r in ranked])
    # an oracle often returns the same region for several prompts: crop and score each box once
    crops, owners = [], []
    for b, (arr, res) in enumerate(zip(arrays, results)):
        boxes = list(dict.fromkeys(tuple(f.box_xyxy) for f in res.found))
        for box, crop in zip(boxes, extract_crops(arr, boxes, pad=crop_pad, min_side=2)):
            crops.append(Image.fromarray(crop))
            owners.append((b, box))
    crop_labels = scorer.rank(crops, 1) if crops else []
    by_box = {o: [list(x) for x in lab] for o, lab in zip(owners, crop_labels)}
    per_find = {
        (b, j): by_box[(b, tuple(f.box_xyxy))] for b, res in enumerate(results) for j, f in enumerate(res.found)
    }
    records = []
    for b, ((index, item, _), r, res) in enumerate(zip(batch, ranked, results)):
        finds = [
            {
                "label": f.label,
                "score": round(float(f.score), 6),
                "box": [round(float(v), 2) for v in f.box_xyxy],
                "crop": per_find.get((b, j), []),
            }
            for j, f in enumerate(res.found)
        ]
        records.append(
            {
                "key": item.key,
                "index": index,
                "image": item.ref,
                "is_poisoned": item.is_poisoned,
                "clip": [list(x) for x in r],
                "finds": finds,
                "unknown": list(res.unknown),
            }
        )
    return records


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """Stream the JSON lines of ``path`` (a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):
                    return
                raise EftclipError(f"{path}: line {line_no} is not valid JSON") from None


def run_pass1(
    items: Sequence[tuple[int, ImageItem]],
    log_path: Path,
    scorer: ClipScorer,
    oracle,
    *,
    prompt_tau: int,
    batch_size: int,
    crop_pad: float = 0.0,
    on_error: str = "skip",
    done: set[str] | None = None,
    desc: str = "detect",
) -> dict:
    """Examine ``(index, item)`` pairs not in ``done``; append their records to ``log_path``.

    Returns ``{"examined", "skipped_before", "failed"}``.
    """
    from tqdm import tqdm

    from eftclip.io import append_jsonl

    done = set() if done is None else done
    todo = [(i, it) for i, it in items if it.key not in done]
    failed = 0
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as fh, tqdm(
        total=len(todo), desc=desc, unit="img", file=sys.stderr, disable=None
    ) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = []
            for index, item in chunk:
                try:
                    im = item.load()
                except EftclipError as exc:
                    reason = str(exc)
                except Exception as exc:  # unreadable or truncated image files
                    reason = f"{type(exc).__name__}: {exc}"
                else:
                    batch.append((index, item, im))
                    continue
                if on_error == "fail":
                    raise EftclipError(f"{item.ref}: cannot load image (key {item.key}): {reason}")
                failed += 1
                append_jsonl(
                    fh,
                    {"key": item.key, "index": index, "image": item.ref, "is_poisoned": item.is_poisoned,
                     "error": reason},
                )
            if batch:
                for rec in examine_batch(batch, scorer, oracle, prompt_tau, crop_pad):
                    append_jsonl(fh, rec)
            bar.update(len(chunk))
    return {"examined": len(todo) - failed, "skipped_before": len(items) - len(todo), "failed": failed}


# --------------------------------------------------------------------------- pass 2


def image_sets(rec: dict, tau: int, theta: float) -> tuple[list[str], list[str], list[str], list[str], list[dict]]:
    """``(L_i, S_i, R_i, unknown_i, kept finds)`` of a pass-1 record at ``tau`` and ``theta``.

    ``S_i`` holds the labels of ``L_i`` with a find scoring ``>= theta``; ``R_i``
    the crop labels of those finds (the paper crops only the regions kept at theta).
    """
    L = [c[0] for c in rec["clip"][:tau]]
    Lset = set(L)
    kept = [f for f in rec["finds"] if f["score"] >= theta and f["label"] in Lset]
    S = list(dict.fromkeys(f["label"] for f in kept))
    R = list(dict.fromkeys(f["crop"][0][0] for f in kept if f.get("crop")))
    unknown = [u for u in rec.get("unknown", []) if u in Lset]
    return L, S, R, unknown, kept


def _why(rec: dict, L: list[str], kept: list[dict], hits: set[str], theta: float, rule: str) -> str:
    parts = []
    for lab in sorted(hits):
        best = max((f["score"] for f in rec["finds"] if f["label"] == lab), default=None)
        where = "top-1" if L and L[0] == lab else f"rank {L.index(lab) + 1}"
        conf = "the oracle found nothing for it" if best is None else f"the oracle's best score {best:.2f} < theta {theta}"
        parts.append(f"'{lab}' ({where} of CLIP's list) is a known trigger and {conf}")
    return "; ".join(parts)


def decide(records: Callable[[], Iterable[dict]], p: DecideParams, *, write: Callable[[dict], None] | None = None,
           figure_n: int = 0) -> dict:
    """Pass 2 over pass-1 records; returns K, flags summary, profiles and metrics for every mode.

    ``records`` is called twice (two streams over the same records, dataset
    order).  When ``write`` is given, every record is passed to it with the
    decision fields added (``L``, ``S``, ``R``, ``flagged``, ``why``,
    ``affected``, ``flags``, ``faithful``).
    """
    check_params(p)
    target = None
    if p.target:
        from eftclip.detection.vocab import normalise_label

        target = normalise_label(p.target)

    def good(stream):
        return (r for r in stream if "error" not in r)

    # stream 1: robust evidence
    evidence = gather_evidence(
        ((L, S, U) for L, S, _, U, _ in (image_sets(r, p.tau, p.theta) for r in good(records()))),
        evidence=p.evidence,
    )
    K_robust = robust_triggers(evidence, min_share=p.min_share, min_count=p.min_count)

    # stream 2: faithful replay in order, robust flags, outputs
    K_f: set[str] = set()
    truth: list[bool | None] = []
    flags = {"faithful": [], "robust_top1": [], "robust_topk": []}
    aff_counts = {"faithful": Counter(), "robust": Counter()}
    top1_poisoned: Counter[str] = Counter()
    # how often the oracle confirms CLIP's top-1 label: a diagnostic of the oracle, not of the attack
    top1_confirmed = {"all": [0, 0], "clean": [0, 0]}
    n_errors = 0
    figure: list[dict] = []
    for rec in records():
        if "error" in rec:
            n_errors += 1
            if write is not None:
                write(rec)
            continue
        L, S, R, U, kept = image_sets(rec, p.tau, p.theta)
        P = potential_triggers(L, S, R)
        K_next = find_adversarial_trigger(L, S, R, K_f)
        new = K_next - K_f
        K_f = K_next
        A_f = affected_labels(R, S, K_f)
        hits = {rule: flag_image(L, S, K_robust, rule=rule, unknown=U) for rule in FLAG_RULES}
        flagged_r = bool(hits[p.flag_rule])
        A_r = robust_affected(S, K_robust) if flagged_r else None
        flags["faithful"].append(bool(P))
        flags["robust_top1"].append(bool(hits["top1"]))
        flags["robust_topk"].append(bool(hits["topk"]))
        truth.append(rec.get("is_poisoned"))
        if A_f:
            aff_counts["faithful"].update(A_f)
        if A_r:
            aff_counts["robust"].update(A_r)
        if rec.get("is_poisoned") and L:
            top1_poisoned[L[0]] += 1
        if L and L[0] not in U:
            hit = int(L[0] in S)
            for group in ("all",) + (("clean",) if rec.get("is_poisoned") is False else ()):
                top1_confirmed[group][0] += hit
                top1_confirmed[group][1] += 1
        if p.mode == "faithful":
            flagged, affected = bool(P), A_f
            why = (f"labels {sorted(P)} of CLIP's list were confirmed neither by the oracle (theta {p.theta}) "
                   f"nor by CLIP on the oracle's crops" if P else "")
        else:
            flagged, affected = flagged_r, A_r
            why = _why(rec, L, kept, hits[p.flag_rule], p.theta, p.flag_rule) if flagged_r else ""
        if write is not None:
            out = dict(rec)
            out.update(
                {
                    "L": L,
                    "S": [{"label": f["label"], "score": f["score"], "box": f["box"]} for f in kept],
                    "R": R,
                    "flagged": flagged,
                    "why": why,
                    "affected": None if affected is None else sorted(affected),
                    "flags": {k: v[-1] for k, v in flags.items()},
                    "faithful": {"P": sorted(P), "new_triggers": sorted(new),
                                 "A": None if A_f is None else sorted(A_f)},
                }
            )
            write(out)
        if figure_n and flagged and len(figure) < 4 * figure_n:
            figure.append({"image": rec["image"], "L": L, "S": kept, "is_poisoned": rec.get("is_poisoned"),
                           "key": rec["key"]})

    metrics_by = {name: detection_metrics(f, truth) for name, f in flags.items()}
    chosen_name = "faithful" if p.mode == "faithful" else f"robust_{p.flag_rule}"
    K = K_f if p.mode == "faithful" else K_robust
    likely_target = top1_poisoned.most_common(1)[0][0] if top1_poisoned else None
    if figure:
        # poisoned first when the truth is known, then in dataset order
        figure = sorted(figure, key=lambda e: (e["is_poisoned"] is not True,))[:figure_n]
    return {
        "params": {**p.__dict__},
        "K": sorted(K),
        "K_faithful": sorted(K_f),
        "K_robust": sorted(K_robust),
        "evidence": evidence,
        "profile": profile_from_counts(aff_counts["faithful" if p.mode == "faithful" else "robust"]),
        "profiles": {m: profile_from_counts(c) for m, c in aff_counts.items()},
        "n_images": len(truth),
        "n_errors": n_errors,
        "n_flagged": sum(flags[chosen_name]),
        "metrics": metrics_by[chosen_name],
        "metrics_by_mode": metrics_by,
        "chosen": chosen_name,
        "target": target,
        "target_in_K": None if target is None else target in K,
        "likely_target": likely_target,
        "likely_target_in_K": None if likely_target is None else likely_target in K,
        "oracle_top1_confirm_rate": (top1_confirmed["all"][0] / top1_confirmed["all"][1]
                                     if top1_confirmed["all"][1] else None),
        "oracle_top1_confirm_rate_clean": (top1_confirmed["clean"][0] / top1_confirmed["clean"][1]
                                           if top1_confirmed["clean"][1] else None),
        "figure": figure,
    }


# --------------------------------------------------------------------------- the run


_PASS1_FIELDS = ("checkpoint", "images", "vocab", "labels", "vocab_size", "vocab_min_count", "oracle",
                 "oracle_args", "prompt_tau", "templates", "crop_pad", "max_images")


def _dist() -> tuple[int, int]:
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise EftclipError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise EftclipError(f"bad RANK={rank} / WORLD_SIZE={world}")
    return rank, world


def _settings(cfg: DetectConfig, vocab: list[str]) -> dict:
    from eftclip.config import to_dict

    d = to_dict(cfg)
    d["prompt_tau"] = cfg.prompt_tau or cfg.tau
    pass1 = {k: d[k] for k in _PASS1_FIELDS}
    pass1["resolved_vocab"] = vocab
    pass2 = {k: d[k] for k in DecideParams.__dataclass_fields__}
    return {"pass1": pass1, "pass2": pass2}


def _check_out(out: Path, settings: dict, cfg: DetectConfig, rank: int) -> None:
    from eftclip.io import read_json

    run_json = out / "run.json"
    has_run = run_json.exists() or (out / "images.jsonl").exists() or any(out.glob("images.rank*.jsonl"))
    if not has_run:
        return
    if cfg.force:
        # each rank clears its own shard; rank 0 the merged log and the outputs
        (out / f"images.rank{rank}.jsonl").unlink(missing_ok=True)
        (out / f"rank{rank}.done").unlink(missing_ok=True)
        if rank == 0:
            for name in ("images.jsonl", "triggers.json", "affected_labels.csv", "metrics.json", "figure7.png"):
                (out / name).unlink(missing_ok=True)
        return
    if not run_json.exists():
        raise EftclipError(f"{out}: holds per-image records but no run.json; pass --force to start over")
    old = read_json(run_json)
    diff1 = sorted(k for k in settings["pass1"] if old.get("pass1", {}).get(k) != settings["pass1"][k])
    diff2 = sorted(k for k in settings["pass2"] if old.get("pass2", {}).get(k) != settings["pass2"][k])
    if diff1:
        raise EftclipError(
            f"{out}: holds a run made with different settings ({', '.join(diff1)}); "
            "its per-image records cannot be reused; pass --force to start over or choose another --out"
        )
    if diff2 and not cfg.resume:
        raise EftclipError(
            f"{out}: holds a run made with different settings ({', '.join(diff2)}); pass --resume to keep its "
            "per-image records and re-decide with the new settings, or --force to start over"
        )


def run_detection(cfg: DetectConfig, *, oracle=None, bundle=None) -> dict:
    """Run detection as configured; returns the metrics (also written to ``out/metrics.json``).

    ``oracle`` and ``bundle`` may be passed already built (Python API, tests);
    otherwise they come from ``cfg.oracle``/``cfg.oracle_args`` and
    ``cfg.checkpoint``.  Under torchrun, ranks other than 0 return
    ``{"rank": r, ...}`` after their shard.
    """
    from eftclip.config import write_config
    from eftclip.io import atomic_open, repair_jsonl, write_json, write_text

    t0 = time.time()
    if cfg.on_error not in ON_ERROR:
        raise EftclipError(f"--on-error must be one of {ON_ERROR}, not {cfg.on_error!r}")
    if cfg.batch_size < 1:
        raise EftclipError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    prompt_tau = cfg.prompt_tau or cfg.tau
    params = params_of(cfg)
    check_params(params, prompt_tau=prompt_tau)
    if oracle is None:
        from eftclip.oracles import ORACLES

        if cfg.oracle not in ORACLES:
            raise EftclipError(f"--oracle: unknown oracle {cfg.oracle!r}; known: {', '.join(sorted(ORACLES))}")
    out = Path(cfg.out)
    rank, world = _dist()

    items, skipped_rows = list_images(cfg.images, on_error=cfg.on_error)
    if cfg.max_images is not None:
        items = items[: cfg.max_images]
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise EftclipError(f"{cfg.images}: key {dup!r} occurs more than once; keys must be unique")
    vocab = resolve_vocab(cfg, items)
    check_params(params, vocab_size=len(vocab), prompt_tau=prompt_tau)
    if prompt_tau > len(vocab):
        raise EftclipError(f"--prompt-tau {prompt_tau} is larger than the vocabulary ({len(vocab)} labels)")
    settings = _settings(cfg, vocab)
    out.mkdir(parents=True, exist_ok=True)
    _check_out(out, settings, cfg, rank)
    # build the models before marking the folder: a missing checkpoint leaves no half-started run
    if oracle is None:
        from eftclip.oracles import create_oracle

        oracle = create_oracle(cfg.oracle, **dict(cfg.oracle_args))
    if bundle is None:
        from eftclip.models import load_checkpoint

        bundle = load_checkpoint(cfg.checkpoint, device=cfg.device)
    scorer = ClipScorer(bundle, vocab, cfg.templates, cfg.device, cfg.batch_size)
    # every rank writes the same run.json (atomic), so whichever rank starts first marks the folder
    write_json(out / "run.json", settings)
    if rank == 0:
        write_config(out / "config.yaml", cfg)
        write_text(out / "vocab.txt", "\n".join(vocab) + "\n")

    merged = out / "images.jsonl"
    log = merged if world == 1 else out / f"images.rank{rank}.jsonl"
    done = {r["key"] for r in repair_jsonl(log)}
    if log != merged:
        done |= {r["key"] for r in iter_records(merged)}
        (out / f"rank{rank}.done").unlink(missing_ok=True)
    mine = [(i, it) for i, it in enumerate(items) if i % world == rank]
    stats = run_pass1(
        mine, log, scorer, oracle, prompt_tau=prompt_tau, batch_size=cfg.batch_size, crop_pad=cfg.crop_pad,
        on_error=cfg.on_error, done=done, desc=f"detect (rank {rank})" if world > 1 else "detect",
    )
    if world > 1:
        write_text(out / f"rank{rank}.done", json.dumps(stats) + "\n")
        if rank != 0:
            return {"rank": rank, **stats}
    order = {k: i for i, k in enumerate(keys)}
    if world > 1:
        _wait_for_ranks(out, world, cfg.merge_timeout_s)
        _merge(out, world, order)

    # pass 2: decisions, then every output file
    _sort_log(merged, order)
    with atomic_open(out / ".images.decided.jsonl", "w") as fh:
        result = decide(lambda: iter_records(merged), params, write=lambda r: fh.write(json.dumps(r) + "\n"),
                        figure_n=cfg.figure_n)
    os.replace(out / ".images.decided.jsonl", merged)
    metrics = write_outputs(out, result, cfg=cfg, n_listed=len(items), skipped_rows=skipped_rows,
                            seconds=time.time() - t0, stats=stats)
    return metrics


def _wait_for_ranks(out: Path, world: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        missing = [r for r in range(world) if not (out / f"rank{r}.done").exists()]
        if not missing:
            return
        if time.time() > deadline:
            raise EftclipError(f"{out}: ranks {missing} did not finish within {timeout:.0f} s")
        time.sleep(2.0)


def _merge(out: Path, world: int, order: dict[str, int]) -> None:
    """Fold every rank's log into images.jsonl (one record per key, dataset order), then drop the rank files.

    Each log is already in dataset order (ranks take every world-th image in
    order), so a k-way merge streams them without holding the records in memory.
    """
    import heapq

    from eftclip.io import atomic_open

    seen: set[str] = set()
    merged = out / "images.jsonl"
    sources = [merged] + [out / f"images.rank{r}.jsonl" for r in range(world)]
    streams = [((order.get(rec["key"], -1), rec) for rec in iter_records(src)) for src in sources]
    with atomic_open(out / ".images.merged.jsonl", "w") as fh:
        for idx, rec in heapq.merge(*streams, key=lambda t: t[0]):
            if idx >= 0 and rec["key"] not in seen:
                seen.add(rec["key"])
                fh.write(json.dumps(rec) + "\n")
    os.replace(out / ".images.merged.jsonl", merged)
    for r in range(world):
        (out / f"images.rank{r}.jsonl").unlink(missing_ok=True)
        (out / f"rank{r}.done").unlink(missing_ok=True)


def _sort_log(path: Path, order: dict[str, int]) -> None:
    """Put the records of ``path`` in dataset order (Algorithm 1 grows K in that order); drop strays.

    A log written by one process is already in order; checking that streams.
    """
    from eftclip.io import atomic_open

    last, in_order = -1, True
    for r in iter_records(path):
        idx = order.get(r["key"], -1)
        if idx <= last:
            in_order = False
            break
        last = idx
    if in_order:
        return
    recs = [r for r in iter_records(path) if r["key"] in order]
    recs.sort(key=lambda r: order[r["key"]])
    with atomic_open(path, "w") as fh:
        for r in recs:
            fh.write(json.dumps(r) + "\n")


def write_outputs(out: Path, result: dict, *, cfg: DetectConfig | None = None, n_listed: int | None = None,
                  skipped_rows: Sequence[dict] = (), seconds: float | None = None, stats: dict | None = None,
                  figure: bool = True) -> dict:
    """Write triggers.json, affected_labels.csv, metrics.json and figure7.png from a :func:`decide` result."""
    from eftclip.io import atomic_open, write_json

    ev = result["evidence"]
    K = result["K"]
    triggers = {
        "mode": result["params"]["mode"],
        "K": K,
        "rule": ("faithful: every label left unconfirmed by the oracle and by the crops in some image "
                 "(Algorithm 1 as written)") if result["params"]["mode"] == "faithful" else (
                 f"robust: labels judged in >= {result['params']['min_count']} images and unconfirmed by the "
                 f"oracle in >= {result['params']['min_share']} of them"),
        "evidence": {lab: ev[lab].as_dict() for lab in K if lab in ev},
        "K_faithful": result["K_faithful"],
        "K_robust": result["K_robust"],
        "all_evidence": {lab: e.as_dict() for lab, e in sorted(ev.items(), key=lambda kv: -kv[1].share)},
    }
    write_json(out / "triggers.json", triggers)
    with atomic_open(out / "affected_labels.csv", "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["label", "count", "frequency"])
        for row in result["profile"]:
            w.writerow([row["label"], row["count"], f"{row['frequency']:.6f}"])
    metrics = {
        "mode": result["params"]["mode"],
        "chosen": result["chosen"],
        "params": result["params"],
        "n_images": result["n_images"],
        "n_skipped": result["n_errors"] + len(skipped_rows),
        "n_listed": n_listed,
        "K": K,
        "n_triggers": len(K),
        "target": result["target"],
        "target_in_K": result["target_in_K"],
        "likely_target": result["likely_target"],
        "likely_target_in_K": result["likely_target_in_K"],
        **result["metrics"],
        "by_mode": result["metrics_by_mode"],
        "K_faithful": result["K_faithful"],
        "K_robust": result["K_robust"],
        "n_affected_labels": len(result["profile"]),
        "oracle_top1_confirm_rate": result["oracle_top1_confirm_rate"],
        "oracle_top1_confirm_rate_clean": result["oracle_top1_confirm_rate_clean"],
        "warnings": _warnings(result),
        "seconds": None if seconds is None else round(seconds, 2),
        "pass1": stats,
        "skipped_rows": list(skipped_rows)[:100],
    }
    write_json(out / "metrics.json", metrics)
    if figure and result["figure"]:
        from eftclip.detection.figures import figure7

        figure7(result["figure"], out / "figure7.png", loader=_figure_loader)
    return metrics


# below this share of confirmed top-1 labels on clean images the oracle cannot tell a trigger from a miss
WEAK_ORACLE = 0.3


def _warnings(result: dict) -> list[str]:
    out = []
    rate = result["oracle_top1_confirm_rate_clean"]
    if rate is None:
        rate = result["oracle_top1_confirm_rate"]
    if rate is not None and rate < WEAK_ORACLE:
        out.append(
            f"the oracle confirms only {rate:.0%} of CLIP's top-1 labels"
            + (" on clean images" if result["oracle_top1_confirm_rate_clean"] is not None else "")
            + f" at theta {result['params']['theta']}: almost every label looks unconfirmed, so K and the "
            "flags are unreliable (causes: too weak an oracle, too high a theta, or a CLIP whose lists miss the real objects)"
        )
    if len(result["K"]) > max(3, 0.25 * len(result["evidence"] or [1])):
        out.append(f"K holds {len(result['K'])} labels; a backdoor usually has one target: check the evidence "
                   "in triggers.json")
    return out


def _figure_loader(ref: str):
    from eftclip.data.captions import open_image

    return open_image(ref)
