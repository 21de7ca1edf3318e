"""Detection rate against patch size rho, position mu, confidence theta and list length tau.

The paper's Figures 3 and 4.  :func:`run_sweep` takes a set of *clean*
images and, for every ``(rho, mu)``, stamps a BadNet-style trigger of side
``rho`` at position ``mu`` on each of them (per-image generator seeded from
``(seed, index)``, so a resumed or repeated sweep triggers identically), runs
pass 1 of the detection once on those triggered copies (and once, shared, on
the untouched clean images), and then re-runs only pass 2 for every
``(theta, tau)``: the oracle's finds are stored with their scores and CLIP's
list with ``max(taus)`` labels, so a theta or tau sweep costs no model pass.
(The oracle is prompted with ``max(taus)`` labels; for an oracle that scores
each prompt on its own that is the same as prompting with ``tau``.)

Outputs in ``out``: ``clean/images.jsonl``, ``rho{r}_mu{m}/images.jsonl``
(resumable pass-1 logs), ``sweep.csv`` / ``sweep.json`` (one row per
``rho, mu, theta, tau``: detection rate, precision, false-positive rate, K,
whether the target is in K), ``figure3.png``, ``figure4.png``, ``config.yaml``.
"""

from __future__ import annotations

import csv
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eftclip.config import cli_flag
from eftclip.detection.algorithms import FLAG_RULES
from eftclip.detection.config import MODES, DecideParams, check_params
from eftclip.detection.decide import decide
from eftclip.detection.records import iter_records, run_pass1
from eftclip.detection.scoring import build_models
from eftclip.detection.sources import ImageItem, list_images, resolve_vocab
from eftclip.errors import EftclipError


@dataclass(frozen=True)
class SweepConfig:
    """Settings of ``eftclip sweep``."""

    checkpoint: str  # the suspect (poisoned) CLIP
    images: str  # clean images: caption CSV/TSV/webdataset or a folder
    out: str  # output folder
    vocab: str = "mined"  # label file or "mined"
    labels: tuple[str, ...] = ()  # labels always in the vocabulary
    target: str | None = None  # the attack's target label (added to the vocabulary; metrics check K holds it)
    oracle: str = "reference"  # oracle backend
    oracle_args: dict = field(default_factory=dict, metadata=cli_flag("--oracle-arg"))  # oracle constructor arguments
    trigger: str = "badnet"  # patch trigger name; its size/position are set from rho/mu
    trigger_args: dict = field(default_factory=dict, metadata=cli_flag("--trigger-arg"))  # other trigger parameters (e.g. pattern)
    rhos: tuple[int, ...] = field(default=(8, 16), metadata=cli_flag("--rho"))  # patch sides in pixels
    mus: tuple[str, ...] = field(default=("random", "top-left", "bottom-right"), metadata=cli_flag("--mu"))  # patch positions
    thetas: tuple[float, ...] = field(default=(0.5, 0.58, 0.66, 0.74, 0.82), metadata=cli_flag("--theta"))  # oracle confidence thresholds
    taus: tuple[int, ...] = field(default=(5, 7), metadata=cli_flag("--tau"))  # CLIP list lengths
    mode: str = field(default="robust", metadata=cli_flag(choices=MODES))  # detection mode (see eftclip.detection.algorithms)
    flag_rule: str = field(default="top1", metadata=cli_flag(choices=FLAG_RULES))  # robust flag rule
    evidence: str = field(default="top1", metadata=cli_flag(choices=FLAG_RULES))  # robust evidence counting (rank 1 only, or "topk")
    min_share: float = 0.66  # robust q
    min_count: int = 5  # robust m
    include_clean: bool = field(default=True, metadata=cli_flag("--clean"))  # also examine the untouched images (precision, false positives)
    vocab_size: int = 200  # mined vocabulary size
    vocab_min_count: int = 3  # mined vocabulary: least caption count
    templates: tuple[str, ...] = field(default=("a photo of a {}.",), metadata=cli_flag("--template"))  # CLIP prompt templates
    batch_size: int = 32  # images per batch
    device: str = "cpu"  # torch device
    device_crops: bool | None = None  # as in DetectConfig: crops cut and resized on the device; unset: on CUDA only
    max_images: int | None = None  # only the first N clean images
    seed: int = 0  # seed of the per-image trigger randomness


def _triggered_loader(item: ImageItem, trigger, seed: int, index: int):
    def load():
        from PIL import Image

        image = np.asarray(item.load(), dtype=np.uint8)
        rng = np.random.default_rng([seed, index])
        return Image.fromarray(trigger.apply(image, rng).image)

    return load


def run_sweep(cfg: SweepConfig, *, oracle=None, bundle=None) -> list[dict]:
    """Run the sweep; returns the rows (also in ``out/sweep.csv`` and ``sweep.json``)."""
    from eftclip.config import write_config
    from eftclip.io import write_text

    _check_grid(cfg)
    out = Path(cfg.out)
    items, _ = list_images(cfg.images)
    if cfg.max_images is not None:
        items = items[: cfg.max_images]
    vocab = resolve_vocab(
        _VocabView(cfg.vocab, cfg.labels, cfg.target, cfg.vocab_size, cfg.vocab_min_count, cfg.images), items
    )
    for tau in cfg.taus:
        check_params(_decision(cfg, tau=tau), vocab_size=len(vocab))
    triggers = _triggers(cfg, items)
    out.mkdir(parents=True, exist_ok=True)
    write_config(out / "config.yaml", cfg)
    write_text(out / "vocab.txt", "\n".join(vocab) + "\n")
    scorer, oracle = build_models(cfg, vocab, oracle, bundle)

    def pass1(log: Path, pairs, desc):
        from eftclip.io import repair_jsonl

        done = {r["key"] for r in repair_jsonl(log)}
        run_pass1(pairs, log, scorer, oracle, prompt_tau=max(cfg.taus), batch_size=cfg.batch_size, done=done,
                  desc=desc)

    clean_log = out / "clean" / "images.jsonl"
    if cfg.include_clean:
        clean = [(i, ImageItem(f"clean/{it.key}", it.ref, False, it.caption, it.load)) for i, it in enumerate(items)]
        pass1(clean_log, clean, "sweep: clean")
    rows = []
    for (rho, mu), trig in triggers.items():
        log = out / f"rho{rho}_mu{mu}" / "images.jsonl"
        pairs = [
            (i, ImageItem(f"trig/{it.key}", it.ref, True, it.caption, _triggered_loader(it, trig, cfg.seed, i)))
            for i, it in enumerate(items)
        ]
        pass1(log, pairs, f"sweep: rho={rho} mu={mu}")
        rows += _decide_grid(cfg, rho, mu, log, clean_log)
        print(f"sweep: rho={rho} mu={mu} done", file=sys.stderr)
    _write_rows(out, rows, cfg)
    return rows


def _check_grid(cfg: SweepConfig) -> None:
    if not cfg.rhos or not cfg.mus or not cfg.thetas or not cfg.taus:
        raise EftclipError("sweep: --rho, --mu, --theta and --tau each need at least one value")
    for theta in cfg.thetas:
        check_params(DecideParams(theta=theta))


def _decision(cfg: SweepConfig, *, tau: int, theta: float = DecideParams.theta, target: str | None = None) -> DecideParams:
    """The pass-2 settings of one grid point."""
    return DecideParams(tau=tau, theta=theta, mode=cfg.mode, flag_rule=cfg.flag_rule, evidence=cfg.evidence,
                        min_share=cfg.min_share, min_count=cfg.min_count, target=target)


def _triggers(cfg: SweepConfig, items: list[ImageItem]) -> dict:
    """One trigger per ``(rho, mu)``; a patch that cannot fit is a setting error, raised before any model pass."""
    from eftclip.attacks import create_trigger

    triggers = {}
    for rho, mu in itertools.product(cfg.rhos, cfg.mus):
        triggers[(rho, mu)] = create_trigger(cfg.trigger, **{**cfg.trigger_args, "size": rho, "position": mu})
    probe = np.asarray(items[0].load(), dtype=np.uint8)
    for trig in triggers.values():
        trig.apply(probe, np.random.default_rng(0))
    return triggers


def _decide_grid(cfg: SweepConfig, rho: int, mu: str, log: Path, clean_log: Path) -> list[dict]:
    """Pass 2 for every ``(theta, tau)`` over one patch setting's records (and the clean ones)."""
    from eftclip.detection.vocab import normalise_label

    target = normalise_label(cfg.target) if cfg.target else None

    def records():
        if cfg.include_clean:
            yield from iter_records(clean_log)
        yield from iter_records(log)

    rows = []
    for theta, tau in itertools.product(cfg.thetas, cfg.taus):
        res = decide(records, _decision(cfg, tau=tau, theta=theta, target=target))
        m = res["metrics"]
        rows.append(
            {
                "rho": rho, "mu": mu, "theta": theta, "tau": tau,
                "detection_rate": m["detection_rate"], "precision": m["precision"],
                "false_positive_rate": m["false_positive_rate"], "n_poisoned": m["n_poisoned"],
                "n_clean": m["n_clean"], "K": res["K"], "target_in_K": res["target_in_K"],
                "faithful_detection_rate": res["metrics_by_mode"]["faithful"]["detection_rate"],
            }
        )
    return rows


def _write_rows(out: Path, rows: list[dict], cfg: SweepConfig) -> None:
    from eftclip.detection.figures import sweep_figures
    from eftclip.io import atomic_open, write_json

    write_json(out / "sweep.json", rows)
    cols = list(rows[0]) if rows else []
    with atomic_open(out / "sweep.csv", "w") as fh:
        w = csv.DictWriter(fh, cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "K": " ".join(r["K"])})
    sweep_figures(rows, out, theta_ref=0.66, tau_ref=min(cfg.taus))


@dataclass(frozen=True)
class _VocabView:
    """The fields :func:`resolve_vocab` reads, taken from a SweepConfig."""

    vocab: str
    labels: tuple[str, ...]
    target: str | None
    vocab_size: int
    vocab_min_count: int
    images: str
