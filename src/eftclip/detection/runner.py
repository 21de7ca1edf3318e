"""Detection over a dataset: the poisoned CLIP's lists, the oracle's finds, then Algorithms 1 and 2.

Two passes, one model pass:

**Pass 1** (models; streaming, resumable, sharded; :mod:`~eftclip.detection.scoring`
and :mod:`~eftclip.detection.records`).  For each image ``I_i``, in batches:
CLIP ranks the vocabulary (``clip`` = top ``prompt_tau`` labels with
probabilities); the oracle is prompted with that list and *every* find it
returns is kept with its score and box (no threshold yet); each find's box is
cropped and re-scored by the same CLIP (``crop`` = its top label).  One JSON
line per image is appended to ``images.jsonl`` as soon as its batch is done
(per-rank shards under torchrun, merged by rank 0).  A killed run resumes.

**Pass 2** (no model; :func:`~eftclip.detection.decide.decide`).  From the
stored records, for the chosen ``tau`` and ``theta``, both modes are computed
and the chosen ``mode`` (and ``flag_rule``) decides what goes into
``triggers.json``, ``affected_labels.csv``, the ``flagged``/``why`` fields of
``images.jsonl`` and the headline of ``metrics.json``
(:mod:`~eftclip.detection.outputs`).  A theta or tau sweep re-runs pass 2 only
(``tau`` up to ``prompt_tau``).

Outputs in ``out``: ``config.yaml`` and ``run.json`` (resolved settings),
``vocab.txt``, ``images.jsonl``, ``triggers.json``, ``affected_labels.csv``,
``metrics.json``, ``figure7.png``.  An ``out`` that holds a run made with
other settings is refused unless ``resume`` (keep the per-image records; only
allowed when the pass-1 settings match) or ``force`` (start over).

The names below the imports are re-exported so that code written against the
single-module runner keeps working.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from eftclip.detection.config import (  # noqa: F401  (re-exports)
    MODES,
    ON_ERROR,
    DecideParams,
    DetectConfig,
    check_params,
    check_run_settings,
    run_settings,
)
from eftclip.detection.decide import decide, image_sets  # noqa: F401  (re-exports)
from eftclip.detection.outputs import WEAK_ORACLE, write_outputs  # noqa: F401  (re-exports)
from eftclip.detection.records import Shard, check_out, gather_shards, iter_records, run_pass1, run_shard  # noqa: F401
from eftclip.detection.scoring import ClipScorer, build_models, examine_batch  # noqa: F401  (re-exports)
from eftclip.detection.sources import (  # noqa: F401  (re-exports)
    IMAGE_SUFFIXES,
    ImageItem,
    check_unique_keys,
    list_images,
    resolve_vocab,
)
from eftclip.errors import EftclipError


def run_detection(cfg: DetectConfig, *, oracle=None, bundle=None) -> dict:
    """Run detection as configured; returns the metrics (also written to ``out/metrics.json``).

    ``oracle`` and ``bundle`` may be passed already built (Python API, tests);
    otherwise they come from ``cfg.oracle``/``cfg.oracle_args`` and
    ``cfg.checkpoint``.  Under torchrun, ranks other than 0 return
    ``{"rank": r, ...}`` after their shard.
    """
    t0 = time.time()
    check_run_settings(cfg)
    if oracle is None:
        _check_oracle_name(cfg.oracle)
    shard = Shard.from_env(Path(cfg.out))
    items, skipped_rows = _items(cfg)
    vocab = _vocab(cfg, items)
    shard.out.mkdir(parents=True, exist_ok=True)
    check_out(shard, run_settings(cfg, vocab), resume=cfg.resume, force=cfg.force)
    # build the models before marking the folder: a missing checkpoint leaves no half-started run
    scorer, oracle = build_models(cfg, vocab, oracle, bundle)
    _mark_folder(shard, cfg, vocab)

    stats = run_shard(shard, items, scorer, oracle, prompt_tau=cfg.list_length, batch_size=cfg.batch_size,
                      crop_pad=cfg.crop_pad, on_error=cfg.on_error)
    if shard.rank != 0:
        return {"rank": shard.rank, **stats}
    gather_shards(shard, [it.key for it in items], cfg.merge_timeout_s)

    result = _decide_log(shard.merged, cfg)
    return write_outputs(shard.out, result, cfg=cfg, n_listed=len(items), skipped_rows=skipped_rows,
                         seconds=time.time() - t0, stats=stats)


def _check_oracle_name(name: str) -> None:
    from eftclip.oracles import ORACLES

    if name not in ORACLES:
        raise EftclipError(f"--oracle: unknown oracle {name!r}; known: {', '.join(sorted(ORACLES))}")


def _items(cfg: DetectConfig) -> tuple[list[ImageItem], list[dict]]:
    items, skipped_rows = list_images(cfg.images, on_error=cfg.on_error)
    if cfg.max_images is not None:
        items = items[: cfg.max_images]
    check_unique_keys(items, cfg.images)
    return items, skipped_rows


def _vocab(cfg: DetectConfig, items: list[ImageItem]) -> list[str]:
    vocab = resolve_vocab(cfg, items)
    check_params(cfg, vocab_size=len(vocab), prompt_tau=cfg.list_length)
    if cfg.list_length > len(vocab):
        raise EftclipError(f"--prompt-tau {cfg.list_length} is larger than the vocabulary ({len(vocab)} labels)")
    return vocab


def _mark_folder(shard: Shard, cfg: DetectConfig, vocab: list[str]) -> None:
    from eftclip.config import write_config
    from eftclip.io import write_json, write_text

    # every rank writes the same run.json (atomic), so whichever rank starts first marks the folder
    write_json(shard.out / "run.json", run_settings(cfg, vocab))
    if shard.rank == 0:
        write_config(shard.out / "config.yaml", cfg)
        write_text(shard.out / "vocab.txt", "\n".join(vocab) + "\n")


def _decide_log(merged: Path, cfg: DetectConfig) -> dict:
    """Pass 2 over the merged log, whose records are replaced by their decided versions."""
    from eftclip.io import atomic_open

    tmp = merged.parent / ".images.decided.jsonl"
    with atomic_open(tmp, "w") as fh:
        result = decide(lambda: iter_records(merged), cfg, write=lambda r: fh.write(json.dumps(r) + "\n"),
                        figure_n=cfg.figure_n)
    os.replace(tmp, merged)
    return result
