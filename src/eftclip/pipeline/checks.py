"""Cheap checks of a whole experiment config, before any stage runs.

Types and ranges of every value, the attack parameters (each trigger is built once, on
nothing), the targets against the source's classes, the defenses' set builders and
objectives.  Each error names the key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eftclip.detection.config import MODES
from eftclip.errors import EftclipError


def validate(cfg: Any, source: Any) -> None:
    """Raise :class:`EftclipError` naming the first bad key of ``cfg`` (an ExperimentConfig)."""
    _check_types(cfg, "")
    _check_ranges(cfg)
    _check_attacks(cfg, source)
    _check_defenses(cfg, source.pool_size())
    for target in (cfg.target, *cfg.targets):
        source.check_target(target)


def _check_types(obj: Any, prefix: str) -> None:
    """Every field of a (nested) frozen config holds a value of its declared simple type."""
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_types(value, f"{key}.")
            continue
        allowed = _simple_types(hints.get(f.name))
        if allowed and not _is_instance(value, allowed):
            names = "/".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise EftclipError(f"{key}: expected {names}, got {value!r}")


def _simple_types(hint: Any) -> tuple | None:
    import types
    import typing

    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    simple = tuple(t for t in args if t in (int, float, str, bool, type(None)))
    return simple if simple and len(simple) == len(args) else None


def _is_instance(value: Any, allowed: tuple) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, allowed)


def _positive(name: str, value: Any) -> None:
    if value is not None and value < 1:
        raise EftclipError(f"{name} must be >= 1, got {value}")


def _check_ranges(cfg: Any) -> None:
    if not cfg.seeds:
        raise EftclipError("seeds: at least one seed")
    for seed in cfg.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise EftclipError(f"seeds: each seed must be a whole number >= 0, got {seed!r}")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise EftclipError(f"seeds: each seed may appear once (got {list(cfg.seeds)})")
    for name in ("workers", "train_procs", "budget"):
        _positive(name, getattr(cfg, name))
    for recipe in ("pretrain", "finetune"):
        for name in ("epochs", "batch_size"):
            _positive(f"{recipe}.{name}", getattr(getattr(cfg, recipe), name))
        lr = getattr(cfg, recipe).lr
        if not 0 < lr < 10:
            raise EftclipError(f"{recipe}.lr must be in (0, 10), got {lr}")
        batch = getattr(cfg, recipe).batch_size
        if cfg.train_procs > 1 and batch % cfg.train_procs:
            # each of the torchrun ranks takes an equal share of the global batch
            raise EftclipError(f"{recipe}.batch_size {batch} does not split evenly over train_procs "
                               f"{cfg.train_procs} processes")
    d = cfg.detect
    _positive("detect.scenes", d.scenes)
    _positive("detect.tau", d.tau)
    if not 0 < d.triggered_share < 1:
        raise EftclipError(f"detect.triggered_share must be in (0, 1), got {d.triggered_share}")
    if d.theta is not None and not 0 <= d.theta <= 1:
        raise EftclipError(f"detect.theta must be in [0, 1], got {d.theta}")
    if d.mode not in MODES:
        raise EftclipError(f"detect.mode: unknown '{d.mode}' (known: {', '.join(MODES)})")
    if not 0 <= d.min_share <= 1:
        raise EftclipError(f"detect.min_share must be in [0, 1], got {d.min_share}")
    _positive("detect.min_count", d.min_count)
    _positive("detect.batch_size", d.batch_size)
    if not 0 < cfg.poison_rate < 1:
        raise EftclipError(f"poison_rate must be in (0, 1), got {cfg.poison_rate}")


def _unique(key: str, names: list[str], what: str) -> list[str]:
    if len(set(names)) != len(names):
        raise EftclipError(f"{key}: {what} may appear once (got {', '.join(names)})")
    return names


def _check_attacks(cfg: Any, source: Any) -> None:
    from eftclip.attacks import TRIGGERS, create_trigger

    names = _unique("attacks", [a.name for a in cfg.attacks], "each attack")
    for a in cfg.attacks:
        if a.name not in TRIGGERS:
            raise EftclipError(f"attacks: unknown attack '{a.name}' (known: {', '.join(sorted(TRIGGERS))})")
        rate = cfg.poison_rate if a.poison_rate is None else a.poison_rate
        if not 0 < rate < 1:
            raise EftclipError(f"attacks: {a.name}: poison_rate must be in (0, 1), got {rate}")
        params = {**source.attack_defaults.get(a.name, {}), **a.params}
        params.pop("steps", None)  # the optimiser's budget, not a trigger parameter
        if a.name == "trojannn" and "pattern_file" not in params:
            continue  # its pattern does not exist until it is optimised
        try:
            _try_on_blank(create_trigger(a.name, **params), source.image_size())
        except (TypeError, ValueError, EftclipError) as exc:
            raise EftclipError(f"attacks: {a.name}: bad parameters {params}: {exc}") from exc
    if cfg.roclip.attack and cfg.roclip.attack not in names:
        raise EftclipError(f"roclip.attack: '{cfg.roclip.attack}' is not one of the attacks ({', '.join(names)})")


def _try_on_blank(trigger: Any, size: int) -> None:
    """Apply the trigger once to a blank image of the source's size: a patch larger than the image,
    or parameters that only fail on pixels, fail here rather than in the poisoning stage."""
    import numpy as np

    trigger.apply(np.zeros((size, size, 3), dtype=np.uint8), np.random.default_rng(0))


def _check_defenses(cfg: Any, pool: int) -> None:
    from eftclip.pipeline.defenses import SET_BUILDERS
    from eftclip.curation.curate import PROFILE_FILES as PROFILES
    from eftclip.training.config import FINETUNE_OBJECTIVES as OBJECTIVES

    _unique("defenses", [d.name for d in cfg.defenses], "each name")
    for d in cfg.defenses:
        if d.set not in SET_BUILDERS:
            raise EftclipError(f"defenses: {d.name}: unknown set '{d.set}' (known: {', '.join(sorted(SET_BUILDERS))})")
        objective = d.objective or cfg.finetune.objective
        if objective not in OBJECTIVES:
            raise EftclipError(f"defenses: {d.name}: unknown objective '{objective}' "
                               f"(known: {', '.join(sorted(OBJECTIVES))})")
        if not d.scale > 0:
            raise EftclipError(f"defenses: {d.name}: scale must be > 0, got {d.scale}")
        if d.lr is not None and not 0 < d.lr < 10:
            raise EftclipError(f"defenses: {d.name}: lr must be in (0, 10), got {d.lr}")
        if d.epochs is not None and d.epochs < 1:
            raise EftclipError(f"defenses: {d.name}: epochs must be >= 1, got {d.epochs}")
        if not 0 <= d.anchor_weight < 1e6:
            raise EftclipError(f"defenses: {d.name}: anchor_weight must be >= 0 and finite, got {d.anchor_weight}")
        if d.profile not in PROFILES:
            raise EftclipError(f"defenses: {d.name}: unknown profile '{d.profile}' (known: {', '.join(PROFILES)})")
        pairs = int(round(d.scale * cfg.budget))
        if pairs > pool:
            raise EftclipError(f"defenses: {d.name}: {pairs} pairs (scale {d.scale} x budget {cfg.budget}) exceed "
                               f"the clean pool ({pool} pairs)")
        for share in ("unaffected_ratio", "unlearn_share", "stamp_share"):
            if not 0 <= getattr(d, share) <= 1:
                raise EftclipError(f"defenses: {d.name}: {share} must be in [0, 1], got {getattr(d, share)}")
