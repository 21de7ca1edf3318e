"""The cheap checks train and finetune share before any training starts."""

from __future__ import annotations

import sys
from typing import Any

from eftclip.guards import check_count, check_device, check_io


def check_run_io(cfg: Any, *, checkpoint: str | None = None) -> None:
    """Refuse a run folder that is, contains or lies inside an input; refuse a missing device.

    ``cfg`` is a TrainConfig or FinetuneConfig (``data``, ``eval_data``, ``out``,
    ``device``); ``checkpoint`` the model a fine-tune starts from.  Without this,
    ``finetune --out`` set to the checkpoint's own folder replaces its weights.
    """
    check_io({"--checkpoint": checkpoint, "--data": cfg.data, "--eval-data": cfg.eval_data},
             {"--out": cfg.out})
    check_device(cfg.device)


def check_detect_inputs(cfg: Any, *, config: str | None = None) -> None:
    """detect and sweep: counts, inputs against the output folder, the device.

    ``--max-images`` must be >= 1 (leave it out for all): 0 used to examine no
    image and report ``K = []``, a clean verdict on any model, and a negative
    value silently meant "all but the last N".
    """
    check_count(cfg.max_images, "--max-images")
    check_count(cfg.batch_size, "--batch-size", optional=False)
    vocab = getattr(cfg, "vocab", None)
    check_io({"--checkpoint": cfg.checkpoint, "--images": cfg.images, "--vocab": vocab, "--config": config},
             {"--out": cfg.out})
    check_device(cfg.device)


def warn_empty_profile(detection: str, profile: str | None = None) -> None:
    """Say so when a detection found triggers but no affected labels (curate then draws a uniform mix).

    The documented fallback (docs/reliability.md): a profile table with only its
    header gives every vocabulary label the same weight.  With a non-empty K that
    is worth a loud line, since the curated set then follows no profile.
    """
    from pathlib import Path

    from eftclip.curation.curate import profile_file
    from eftclip.curation.profile import read_affected_labels
    from eftclip.io import read_json

    folder = Path(detection)
    triggers = folder / "triggers.json"
    if not (folder.is_dir() and triggers.is_file()):
        return  # curate itself names what is missing
    _, table = profile_file(folder, profile)
    found = read_json(triggers)
    k = found.get("K", []) if isinstance(found, dict) else []
    if k and table.is_file() and not any(n > 0 for n in read_affected_labels(table).values()):
        print(f"eftclip curate: warning: {table} lists no affected labels though K = {list(k)}; "
              "drawing a uniform mix over the vocabulary instead of a profile", file=sys.stderr)
