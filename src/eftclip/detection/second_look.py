"""The second look: once K is known, ask the oracle about the whole vocabulary in each flagged image.

The paper's rule takes a flagged image's affected labels from ``S_i``, the
oracle's confirmations of CLIP's own top-tau list; under the trigger that list
is mostly the same few labels for every image, so the objects really there are
never asked about.  The second look asks the detection's oracle about every
vocabulary label (in batches of ``prompt_batch`` prompts) on each flagged
image; affected labels = labels found with score ``>= theta``, minus K.

Inputs (a finished ``eftclip detect`` folder): ``images.jsonl`` (only the
``key``, ``image`` and ``flagged`` fields are read), ``metrics.json`` (``K``),
``vocab.txt`` and ``config.yaml`` (the oracle and its arguments, the default
theta).  Nothing else: never the detection set's ``is_poisoned`` column or its
captions.  The paper's rule's outputs are left as they are.

Outputs beside them:

- ``second_look.jsonl``: one line per flagged image, ``{"key", "image" (as in
  images.jsonl), "theta", "found" {label: best score in [0, 1]} (every label
  the oracle returned, any score), "unknown" [prompts the oracle cannot
  represent], "affected" [sorted labels]}``; appended as images are done, so a
  killed run resumes where it stopped; a later run with another theta
  re-decides ``affected`` from the stored scores without the oracle;
- ``affected_labels_second_look.csv``: ``label,count,frequency``, the format
  of ``affected_labels.csv``;
- ``second_look.json``: a summary (counts, theta, K, the profile).

For a vocabulary too large to ask in full, ``max_prompts`` asks each image
only about the labels a clean ranker puts highest (:class:`ClipRanker`: a
clean CLIP's zero-shot ranking, never the suspect model's); each row then
also records the ``prompts`` asked.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from eftclip.errors import EftclipError

LOG = "second_look.jsonl"
PROFILE_CSV = "affected_labels_second_look.csv"
SUMMARY = "second_look.json"


@dataclass(frozen=True)
class SecondLookConfig:
    """Settings of a second look."""

    theta: float | None = None  # oracle confidence threshold in [0, 1]; None = the detection's own theta
    prompt_batch: int = 64  # vocabulary labels per oracle call (a large vocabulary takes several calls)
    image_batch: int = 16  # flagged images per oracle call
    max_prompts: int | None = None  # ask each image only its top labels by a clean ranker; None = the whole vocabulary
    progress: bool = True  # a progress bar on stderr


@dataclass(frozen=True)
class DetectionFacts:
    """What the second look may read of a detection run."""

    K: tuple[str, ...]  # trigger labels found by detection
    vocab: tuple[str, ...]  # the run's vocabulary, every label the oracle is asked about
    theta: float  # the run's oracle threshold (the default of the second look)
    flagged: tuple[tuple[str, str], ...]  # (key, image reference) of each flagged image, dataset order
    oracle: str  # oracle backend name (eftclip.oracles.ORACLES)
    oracle_args: Mapping[str, Any]  # its constructor arguments as the run recorded them


def read_detection(detection_dir: str | os.PathLike) -> DetectionFacts:
    """Read K, the vocabulary, theta, the oracle spec and the flagged images of a detection folder."""
    from eftclip.config import load_yaml
    from eftclip.detection.vocab import load_vocab
    from eftclip.io import read_json, read_jsonl

    folder = Path(detection_dir)
    for name in ("images.jsonl", "metrics.json", "vocab.txt", "config.yaml"):
        if not (folder / name).exists():
            raise EftclipError(f"{folder / name}: not found; the second look needs a finished `eftclip detect` folder")
    cfg = load_yaml(folder / "config.yaml")
    if "theta" not in cfg:
        raise EftclipError(f"{folder / 'config.yaml'}: records no theta (not a detection config)")
    flagged = tuple((r["key"], r["image"]) for r in read_jsonl(folder / "images.jsonl") if r.get("flagged"))
    return DetectionFacts(
        K=tuple(read_json(folder / "metrics.json").get("K", [])),
        vocab=tuple(load_vocab(folder / "vocab.txt")),
        theta=float(cfg["theta"]),
        flagged=flagged,
        oracle=str(cfg.get("oracle", "")),
        oracle_args=dict(cfg.get("oracle_args") or {}),
    )


def oracle_from_detection(detection_dir: str | os.PathLike, **overrides: Any):
    """The detection's own oracle, rebuilt from its ``config.yaml`` (same backend and arguments).

    ``overrides`` replace recorded constructor arguments (e.g. ``device="cuda"``).
    """
    from eftclip.oracles import create_oracle

    facts = read_detection(detection_dir)
    if not facts.oracle:
        raise EftclipError(f"{Path(detection_dir) / 'config.yaml'}: names no oracle to rebuild")
    return create_oracle(facts.oracle, **{**facts.oracle_args, **overrides})


class ClipRanker:
    """A clean CLIP's zero-shot ranking of the vocabulary, to choose the prompts of a large vocabulary.

    ``bundle`` must be a clean model (a :class:`eftclip.models.ClipBundle`),
    never the suspect one: the suspect's ranking is what the trigger hijacks.
    """

    def __init__(self, bundle, vocab: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",),
                 device: str = "cpu", batch_size: int = 64):
        import torch

        from eftclip.evaluation.zeroshot import text_classifier

        self.bundle, self.vocab, self.device, self.batch_size = bundle, list(vocab), device, batch_size
        with torch.no_grad():
            self.classifier = text_classifier(bundle, self.vocab, list(templates), device)  # (C, D)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, vocab: Sequence[str], **kwargs: Any) -> "ClipRanker":
        """A ranker from a clean CLIP checkpoint (``.safetensors`` with its side file)."""
        from eftclip.models import load_checkpoint

        return cls(load_checkpoint(checkpoint, device=kwargs.get("device", "cpu")), vocab, **kwargs)

    def __call__(self, images: Sequence[np.ndarray], k: int) -> list[list[str]]:
        """The top ``k`` vocabulary labels of each HWC uint8 image, best first."""
        import torch

        from eftclip.evaluation.zeroshot import image_features

        with torch.no_grad():
            feats = image_features(self.bundle, list(images), self.device, self.batch_size)  # (N, D)
            top = (feats.to(self.classifier) @ self.classifier.T).topk(min(k, len(self.vocab)), dim=1).indices
        return [[self.vocab[j] for j in row] for row in top.cpu().tolist()]


def ask_vocabulary(oracle, images: Sequence[np.ndarray], prompts: Sequence[Sequence[str]] | Sequence[str],
                   prompt_batch: int) -> list[tuple[dict[str, float], list[str]]]:
    """Ask ``oracle`` about labels in each HWC uint8 image, ``prompt_batch`` labels per call.

    ``prompts``: one label list for every image (the vocabulary), or one list
    per image.  Returns, per image, ``({label: best score}, [labels the oracle
    cannot represent])``; a label with no find is absent from the mapping.
    """
    per_image = [list(p) for p in prompts] if prompts and not isinstance(prompts[0], str) else [list(prompts)] * len(images)
    if len(per_image) != len(images):
        raise EftclipError(f"ask_vocabulary: {len(images)} images but {len(per_image)} prompt lists")
    found: list[dict[str, float]] = [{} for _ in images]
    unknown: list[list[str]] = [[] for _ in images]
    step = max(1, int(prompt_batch))
    for start in range(0, max((len(p) for p in per_image), default=0), step):
        # images whose list is used up sit this call out
        todo = [i for i, p in enumerate(per_image) if len(p) > start]
        results = oracle.find_batch([images[i] for i in todo], [per_image[i][start : start + step] for i in todo])
        for i, res in zip(todo, results):
            for f in res.found:
                found[i][f.label] = max(found[i].get(f.label, 0.0), round(float(f.score), 6))
            unknown[i].extend(u for u in res.unknown if u not in unknown[i])
    return list(zip(found, unknown))


def affected_of(found: Mapping[str, float], K: Iterable[str], theta: float) -> list[str]:
    """Labels found with score ``>= theta``, minus K, sorted."""
    K = set(K)
    return sorted(lab for lab, score in found.items() if score >= theta and lab not in K)


def _load(ref: str) -> np.ndarray:
    from eftclip.data.captions import open_image

    try:
        with open_image(ref) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except EftclipError:
        raise
    except Exception as exc:  # unreadable or vanished image files
        raise EftclipError(f"{ref}: cannot load flagged image for the second look: {type(exc).__name__}: {exc}") from exc


def _look_at_new(oracle, facts: DetectionFacts, log: Path, theta: float, cfg: SecondLookConfig, ranker) -> int:
    """Append rows for the flagged images ``log`` does not hold yet; returns how many were looked at."""
    from tqdm import tqdm

    from eftclip.io import append_jsonl, repair_jsonl

    done = {r["key"] for r in repair_jsonl(log)}
    todo = [(k, ref) for k, ref in facts.flagged if k not in done]
    with open(log, "a", encoding="utf-8") as fh, tqdm(total=len(todo), desc="second look", unit="img",
                                                     file=sys.stderr, disable=None if cfg.progress else True) as bar:
        for start in range(0, len(todo), max(1, cfg.image_batch)):
            chunk = todo[start : start + cfg.image_batch]
            images = [_load(ref) for _, ref in chunk]
            prompts = ranker(images, cfg.max_prompts) if cfg.max_prompts else [list(facts.vocab)] * len(images)
            answers = ask_vocabulary(oracle, images, prompts, cfg.prompt_batch)
            for (key, ref), asked, (found, unknown) in zip(chunk, prompts, answers):
                row = {"key": key, "image": ref, "theta": theta, "found": found, "unknown": unknown,
                       "affected": affected_of(found, facts.K, theta)}
                if cfg.max_prompts:
                    row["prompts"] = list(asked)
                append_jsonl(fh, row)
            bar.update(len(chunk))
    return len(todo)


def _redecide(log: Path, facts: DetectionFacts, theta: float) -> list[dict]:
    """The flagged images' rows in dataset order, ``affected`` decided at ``theta``; rewrites ``log`` if that changed any."""
    from eftclip.io import atomic_open, read_jsonl

    by_key = {r["key"]: r for r in read_jsonl(log)}
    rows = []
    for key, _ in facts.flagged:
        row = dict(by_key[key])
        row["theta"], row["affected"] = theta, affected_of(row["found"], facts.K, theta)
        rows.append(row)
    if rows != list(by_key.values()):
        with atomic_open(log, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return rows


def write_profile_csv(path: str | os.PathLike, per_image: Iterable[Iterable[str] | None]) -> list[dict]:
    """Write the profile of per-image affected sets as ``label,count,frequency`` (atomic); returns its rows."""
    from eftclip.detection.metrics import affected_profile
    from eftclip.io import atomic_open

    profile = affected_profile(per_image)
    with atomic_open(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["label", "count", "frequency"])
        for row in profile:
            w.writerow([row["label"], row["count"], f"{row['frequency']:.6f}"])
    return profile


def run_second_look_with(oracle, detection_dir: str | os.PathLike, cfg: SecondLookConfig = SecondLookConfig(),
                         *, ranker=None) -> dict:
    """Run the second look with an already built ``oracle`` (the :class:`eftclip.oracles.Oracle` protocol).

    ``ranker`` (needed with ``cfg.max_prompts``): ``(images HWC uint8, k) ->
    [top-k labels per image]``, e.g. a :class:`ClipRanker` over the detection's
    vocabulary.  Returns the summary (also written to ``second_look.json``).
    """
    from eftclip.io import write_json

    folder = Path(detection_dir)
    facts = read_detection(folder)
    theta = facts.theta if cfg.theta is None else float(cfg.theta)
    if not 0.0 <= theta <= 1.0:
        raise EftclipError(f"--theta must lie in [0, 1], got {theta}")
    if cfg.prompt_batch < 1 or cfg.image_batch < 1:
        raise EftclipError(f"prompt_batch and image_batch must be at least 1, got {cfg.prompt_batch}, {cfg.image_batch}")
    if cfg.max_prompts is not None and (cfg.max_prompts < 1 or ranker is None):
        raise EftclipError(f"max_prompts {cfg.max_prompts}: needs a positive number and a clean ranker "
                           "(ClipRanker) to choose each image's labels")
    log = folder / LOG
    looked = _look_at_new(oracle, facts, log, theta, cfg, ranker)
    rows = _redecide(log, facts, theta)
    profile = write_profile_csv(folder / PROFILE_CSV, (r["affected"] for r in rows))
    empty = [r["key"] for r in rows if not r["affected"]]
    summary = {
        "rule": "labels the oracle finds with score >= theta when asked about the whole vocabulary, minus K",
        "theta": theta,
        "K": list(facts.K),
        "vocab_size": len(facts.vocab),
        "prompt_batch": cfg.prompt_batch,
        "max_prompts": cfg.max_prompts,
        "oracle": facts.oracle,
        "n_flagged": len(facts.flagged),
        "n_looked_now": looked,
        "n_with_affected": len(rows) - len(empty),
        "n_without_affected": len(empty),
        "without_affected": empty[:100],
        "unknown_prompts": sorted({u for r in rows for u in r.get("unknown", [])}),
        "profile": profile,
    }
    write_json(folder / SUMMARY, summary)
    return summary


def run_second_look(detection_dir: str | os.PathLike, theta: float | None = None, *, oracle=None,
                    oracle_overrides: Mapping[str, Any] | None = None,
                    ranker_checkpoint: str | os.PathLike | None = None, **settings: Any) -> dict:
    """One call: rebuild the detection's oracle from its ``config.yaml`` (unless ``oracle`` is given) and look again.

    ``settings`` are further :class:`SecondLookConfig` fields (``prompt_batch``,
    ``image_batch``, ``max_prompts``, ``progress``); ``oracle_overrides``
    replace recorded oracle arguments (e.g. ``{"device": "cuda"}``);
    ``ranker_checkpoint``: a clean CLIP whose ranking picks the labels under
    ``max_prompts``.
    """
    cfg = SecondLookConfig(theta=theta, **settings)
    if oracle is None:
        oracle = oracle_from_detection(detection_dir, **dict(oracle_overrides or {}))
    ranker = None
    if ranker_checkpoint is not None:
        ranker = ClipRanker.from_checkpoint(ranker_checkpoint, read_detection(detection_dir).vocab)
    return run_second_look_with(oracle, detection_dir, cfg, ranker=ranker)
