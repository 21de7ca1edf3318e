"""Recover the trigger from what a defender has: the suspect model, the flagged images and K.

A *method* maps ``(flagged NHWC uint8, scorer, config, clean=, rng=)`` to
``(mask HW float in [0, 1], pattern HWC uint8, details dict)``; methods live in
:data:`RECOVERY_METHODS` with their frozen config class:

- ``occlusion`` (:mod:`eftclip.detection.trigger_occlusion`): pixels whose
  covering removes the K prediction, kept where the flagged images agree;
- ``optimise`` (:mod:`eftclip.detection.trigger_optimise`): the smallest mask
  and a pattern that pull clean images to K;
- ``auto`` (the default): occlusion, then optimise when occlusion finds no
  patch or its trigger pulls fewer than ``min_asr`` of the clean images to K.
  Why this order: occlusion needs only forward passes and no clean pool, and
  its pattern is the attacker's own pixels, read off the flagged images; the
  optimisation is the answer for triggers that are not a fixed patch.

:func:`recover` runs a method and measures the recovered ASR on clean images;
:func:`save_recovery` writes ``mask.png``, ``pattern.png`` and ``trigger.json``;
:func:`load_recovery` gives back the :class:`~eftclip.attacks.recovered.RecoveredTrigger`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from eftclip.attacks.recovered import RecoveredTrigger, save_recovered_trigger
from eftclip.detection.trigger_occlusion import OcclusionConfig, recover_by_occlusion
from eftclip.detection.trigger_optimise import OptimiseConfig, recover_by_optimisation
from eftclip.detection.trigger_scorer import KScorer, pull_to_k
from eftclip.errors import EftclipError

__all__ = ["AutoConfig", "RECOVERY_METHODS", "Recovery", "RecoveryMethod", "load_recovery", "recover",
           "save_recovery"]

DEFAULT_METHOD = "auto"


@dataclass(frozen=True)
class AutoConfig:
    """Settings of the ``auto`` method."""

    occlusion: OcclusionConfig = field(default_factory=OcclusionConfig)  # the first try
    optimise: OptimiseConfig = field(default_factory=OptimiseConfig)  # the fallback (needs clean images)
    min_asr: float = 0.5  # occlusion's trigger must pull at least this share of clean images to K to be kept


def recover_auto(flagged: np.ndarray, scorer: KScorer, cfg: AutoConfig = AutoConfig(), *,
                 clean: np.ndarray | None = None, rng: torch.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Occlusion, then the optimisation when occlusion fails and clean images allow it (see the module doc)."""
    mask, pattern, details = recover_by_occlusion(flagged, scorer, cfg.occlusion)
    if clean is None or len(clean) == 0:
        return mask, pattern, {"chosen": "occlusion", "occlusion": details}
    strength = pull_to_k(scorer, clean, mask, pattern)
    if details["found_patch"] and (strength["recovered_asr"] or 0.0) >= cfg.min_asr:
        return mask, pattern, {"chosen": "occlusion", "occlusion": details}
    mask2, pattern2, details2 = recover_by_optimisation(flagged, scorer, cfg.optimise, clean=clean, rng=rng)
    return mask2, pattern2, {"chosen": "optimise", "occlusion": details, "occlusion_strength": strength,
                             "optimise": details2}


@dataclass(frozen=True)
class RecoveryMethod:
    """A recovery method and the frozen config class of its settings."""

    config: type  # its settings' dataclass (built from a mapping with eftclip.config.from_mapping)
    run: Callable[..., tuple[np.ndarray, np.ndarray, dict]]  # (flagged, scorer, cfg, *, clean, rng) -> mask, pattern, details


RECOVERY_METHODS: dict[str, RecoveryMethod] = {
    "occlusion": RecoveryMethod(OcclusionConfig, recover_by_occlusion),
    "optimise": RecoveryMethod(OptimiseConfig, recover_by_optimisation),
    "auto": RecoveryMethod(AutoConfig, recover_auto),
}


@dataclass(frozen=True)
class Recovery:
    """A recovered trigger: ``mask`` HW float in [0, 1], ``pattern`` HWC uint8, ``summary`` JSON-able."""

    mask: np.ndarray
    pattern: np.ndarray
    summary: dict


def _method(name: str) -> RecoveryMethod:
    if name not in RECOVERY_METHODS:
        raise EftclipError(f"trigger recovery: unknown method {name!r}; known: {', '.join(sorted(RECOVERY_METHODS))}")
    return RECOVERY_METHODS[name]


def _config(method: RecoveryMethod, config: Any) -> Any:
    from eftclip.config import from_mapping

    if config is None:
        return method.config()
    if isinstance(config, dict):
        return from_mapping(method.config, config, source="trigger recovery config")
    if not isinstance(config, method.config):
        raise EftclipError(f"trigger recovery: expected a {method.config.__name__}, got {type(config).__name__}")
    return config


def recover(flagged: np.ndarray, scorer: KScorer, *, method: str = DEFAULT_METHOD, config: Any = None,
            clean: np.ndarray | None = None, rng: torch.Generator | None = None) -> Recovery:
    """Recover the trigger from ``flagged`` (NHWC uint8, one size) with ``method``.

    ``config``: the method's config dataclass, a mapping of its fields, or None
    for the defaults.  ``clean`` (NHWC uint8, same size) is needed by
    ``optimise`` and used by all to measure the recovered ASR.
    """
    spec = _method(method)
    cfg = _config(spec, config)
    if clean is not None and len(clean) and clean.shape[1:3] != flagged.shape[1:3]:
        raise EftclipError(f"trigger recovery: clean images are {clean.shape[1:3]} px and flagged ones "
                           f"{flagged.shape[1:3]} px; load them at one size (trigger_from_detection.load_images)")
    mask, pattern, details = spec.run(flagged, scorer, cfg, clean=clean, rng=rng)
    strength = pull_to_k(scorer, clean, mask, pattern) if clean is not None and len(clean) else None
    summary = {
        "method": method,
        "params": dataclasses.asdict(cfg),
        "image_size": list(mask.shape),
        "n_flagged": int(len(flagged)),
        "n_clean": 0 if clean is None else int(len(clean)),
        "mask_area": round(float(mask.mean()), 6),  # mean of the soft mask: the share of the image it covers
        "mask_pixels": int((mask >= 0.5).sum()),
        "strength": strength,
        "recovered_asr": None if strength is None else strength["recovered_asr"],
        "details": details,
    }
    return Recovery(mask=mask, pattern=pattern, summary=summary)


def save_recovery(out: str | Path, recovery: Recovery) -> RecoveredTrigger:
    """Write ``out/mask.png``, ``out/pattern.png`` and ``out/trigger.json`` (summary + trigger params)."""
    from eftclip.io import write_json

    trigger = save_recovered_trigger(out, recovery.mask, recovery.pattern)
    write_json(Path(out) / "trigger.json", {**recovery.summary, "trigger": {"name": trigger.name, **trigger.params()}})
    return trigger


def load_recovery(folder: str | Path) -> RecoveredTrigger:
    """The trigger saved by :func:`save_recovery` in ``folder`` (its ``mask.png`` and ``pattern.png``)."""
    folder = Path(folder)
    for name in ("mask.png", "pattern.png"):
        if not (folder / name).is_file():
            raise EftclipError(f"{folder}: no {name}; is this a trigger recovery folder?")
    return RecoveredTrigger(mask_file=str(folder / "mask.png"), pattern_file=str(folder / "pattern.png"))
