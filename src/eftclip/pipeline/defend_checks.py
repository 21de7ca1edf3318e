"""Input checks of ``eftclip defend``: every file, name and size, before anything is written."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from eftclip.errors import EftclipError


def _absolute(value: str | None) -> str | None:
    return None if value is None else os.path.abspath(os.path.expanduser(value))


def _is_named(spec: str | None) -> bool:
    """A name (a built-in list, a hub tag) rather than a file."""
    return spec is not None and not os.path.splitext(spec)[1] and os.sep not in spec


def check_files(cfg):
    """``cfg`` with absolute paths; a missing file or folder is an error naming its flag."""
    need = {"data": cfg.data, "pool": cfg.pool, "eval": cfg.eval}
    if cfg.vocab != "mined":
        need["vocab"] = cfg.vocab
    if cfg.classes and not _is_named(cfg.classes):
        need["classes"] = cfg.classes
    if cfg.templates and not _is_named(cfg.templates):
        need["templates"] = cfg.templates
    for flag, path in need.items():
        if path is not None and not os.path.exists(path):
            raise EftclipError(f"--{flag} {path}: no such file or folder")
    if cfg.eval and not os.path.isdir(cfg.eval):
        raise EftclipError(f"--eval {cfg.eval}: not a folder (an ImageFolder: one sub-folder per class)")
    if bool(cfg.eval) != bool(cfg.classes):
        raise EftclipError("--eval and --classes go together: the evaluation folder and its class names")
    if cfg.true_attack and not cfg.eval:
        raise EftclipError("--true-attack needs --eval and --classes (it scores the repair on them)")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise EftclipError(f"--out {cfg.out}: exists and is not a folder")
    paths = {k: _absolute(getattr(cfg, k)) for k in ("checkpoint", "data", "pool", "eval", "out")}
    paths.update({k: _absolute(v) for k, v in need.items() if k in ("vocab", "classes", "templates")})
    return dataclasses.replace(cfg, **paths)


def check_names(cfg) -> tuple[list, dict]:
    """The templates and the oracle's arguments; unknown oracle, bad size or trigger are errors."""
    from eftclip.data.captions import read_captions
    from eftclip.data.zeroshot import load_classnames, load_templates
    from eftclip.detection.runner import DetectConfig
    from eftclip.oracles import ORACLES, model_kwargs

    if cfg.oracle not in ORACLES:
        raise EftclipError(f"--oracle {cfg.oracle!r}: unknown; known: {', '.join(sorted(ORACLES))}")
    if cfg.size < 1:
        raise EftclipError(f"--size {cfg.size}: must be at least 1")
    pool = len(read_captions(cfg.pool, check_images=False).records)
    if cfg.size > pool:
        raise EftclipError(f"--size {cfg.size}: the pool {cfg.pool} holds only {pool} pairs")
    if cfg.classes:
        load_classnames(cfg.classes)
    if cfg.true_attack:
        from eftclip.attacks import create_trigger

        create_trigger(cfg.true_attack, **cfg.true_attack_params)
    templates = load_templates(cfg.templates) if cfg.templates else list(DetectConfig.templates)
    oracle_args = {**model_kwargs(cfg.oracle, cfg.oracle_model, None), **cfg.oracle_args}
    return list(templates), _absolute_files(oracle_args)


def _absolute_files(args: dict) -> dict:
    """Oracle arguments that name existing files (or a weights folder), made absolute (stages run from anywhere).

    Other values stay as written: ``regions=world`` is a method even where ``./world`` exists."""
    from eftclip.oracles import MODEL_ARGS

    weights = set(MODEL_ARGS.values())
    return {k: _absolute(v) if isinstance(v, str) and (os.path.isfile(v) or (k in weights and os.path.isdir(v)))
            else v for k, v in args.items()}


def resolve_model(cfg) -> tuple[str, str | None]:
    """The suspect's weights file and architecture (a tag is fetched or found in the hub cache now)."""
    from eftclip.models import resolve_clip_weights

    if not (cfg.checkpoint or cfg.model or cfg.pretrained):
        raise EftclipError("--checkpoint FILE or --model NAME --pretrained TAG|FILE is required (the suspect model)")
    if cfg.checkpoint and not os.path.isfile(cfg.checkpoint):
        raise EftclipError(f"--checkpoint {cfg.checkpoint}: no such file")
    weights, arch = resolve_clip_weights(checkpoint=_absolute(cfg.checkpoint), model=cfg.model,
                                         pretrained=cfg.pretrained)
    return os.path.abspath(weights), arch


def relative_config(cfg, out: Path, *, oracle_args: dict) -> dict:
    """The resolved config as plain data, with paths relative to ``out`` (the folder it is written in)."""
    from eftclip.config import to_dict

    def rel(value):
        return os.path.relpath(value, out) if isinstance(value, str) and os.path.isabs(value) else value

    data = to_dict(cfg)
    for key in ("checkpoint", "data", "pool", "vocab", "eval", "classes", "templates", "pretrained"):
        data[key] = rel(data.get(key))
    data["oracle_args"] = {k: rel(v) for k, v in oracle_args.items()}
    data["out"] = "."
    return data
