"""Trigger recovery from a detection folder: what the pipeline and ``eftclip defend`` call.

Reads only what a real defender has: the detection's ``metrics.json`` (K),
``vocab.txt`` and ``config.yaml`` (the prompt templates), the ``flagged``
records of ``images.jsonl`` (their image references), the suspect model and,
optionally, a clean pool.  Ground truth (``is_poisoned``, the true target) is
never read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from eftclip.detection.trigger_recovery import DEFAULT_METHOD, recover, save_recovery
from eftclip.detection.trigger_scorer import ClipKScorer
from eftclip.errors import EftclipError

__all__ = ["load_images", "recover_from_detection"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def load_images(refs: Sequence[str], hw: tuple[int, int] | None = None) -> np.ndarray:
    """NHWC uint8 from image references (paths or ``"<shard.tar>::<member>"``), resized to ``hw`` when given.

    Without ``hw`` the first image's size is used for all (bilinear resize).
    """
    from PIL import Image

    from eftclip.data.images import open_image

    out = []
    for ref in refs:
        im = open_image(ref)
        hw = hw or (im.height, im.width)
        if (im.height, im.width) != tuple(hw):
            im = im.resize((hw[1], hw[0]), Image.BILINEAR)
        out.append(np.asarray(im, dtype=np.uint8))
    if not out:
        raise EftclipError("no images to load")
    return np.stack(out)


def _detection_inputs(folder: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    """K, the vocabulary, the templates and the flagged images' references of a detection folder."""
    from eftclip.config import load_yaml
    from eftclip.io import read_json, read_jsonl

    K = list(read_json(folder / "metrics.json").get("K") or [])
    if not K:
        raise EftclipError(f"{folder / 'metrics.json'}: K is empty; detection found no trigger label to recover")
    vocab_file = folder / "vocab.txt"
    if not vocab_file.is_file():
        raise EftclipError(f"{vocab_file}: file not found (the detection's vocabulary)")
    vocab = [line.strip() for line in vocab_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    config = load_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
    templates = list(config.get("templates") or DEFAULT_TEMPLATES)
    flagged = [r["image"] for r in read_jsonl(folder / "images.jsonl") if r.get("flagged") and not r.get("error")]
    if not flagged:
        raise EftclipError(f"{folder / 'images.jsonl'}: no flagged images to recover the trigger from")
    return K, vocab, templates, flagged


def _clean_refs(clean: str | Path, n: int, rng: torch.Generator) -> list[str]:
    from eftclip.data.captions import read_captions

    records = read_captions(clean, check_images=False).records
    pick = torch.randperm(len(records), generator=rng)[:n].sort().values.tolist()
    return [records[i].image for i in pick]


def _bundle(checkpoint_or_bundle: Any, device: str):
    if isinstance(checkpoint_or_bundle, (str, Path)):
        from eftclip.models import load_checkpoint

        return load_checkpoint(checkpoint_or_bundle, device=device)
    return checkpoint_or_bundle


def recover_from_detection(detection_dir: str | Path, checkpoint_or_bundle: Any, *, rng: torch.Generator,
                           out: str | Path, method: str = DEFAULT_METHOD, config: Any = None,
                           clean: str | Path | np.ndarray | None = None, max_flagged: int = 256,
                           max_clean: int = 256, device: str = "cpu") -> dict:
    """Recover the trigger of a suspect CLIP from its detection folder; write it to ``out``.

    ``checkpoint_or_bundle``: a checkpoint path or a loaded ``ClipBundle``.
    ``clean``: a clean pool (caption table path; ``max_clean`` rows drawn with
    ``rng``) or NHWC uint8 images; needed by ``optimise`` and for the recovered
    ASR.  Writes ``out/mask.png``, ``out/pattern.png``, ``out/trigger.json``;
    returns the summary with ``K``, ``out`` and ``trigger`` (``name`` and the
    ``RecoveredTrigger(**params)`` parameters).
    """
    folder = Path(detection_dir)
    K, vocab, templates, refs = _detection_inputs(folder)
    flagged = load_images(refs[:max_flagged])
    hw = flagged.shape[1:3]
    if isinstance(clean, (str, Path)):
        clean = load_images(_clean_refs(clean, max_clean, rng), hw)
    scorer = ClipKScorer(_bundle(checkpoint_or_bundle, device), vocab, K, templates, device)
    recovery = recover(flagged, scorer, method=method, config=config, clean=clean, rng=rng)
    summary = {**recovery.summary, "K": K, "detection_dir": str(folder), "n_flagged_listed": len(refs)}
    trigger = save_recovery(out, dataclasses.replace(recovery, summary=summary))
    return {**summary, "out": str(Path(out)), "trigger": {"name": trigger.name, **trigger.params()}}
