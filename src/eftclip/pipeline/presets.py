"""Experiment configs from YAML: the shipped presets (``demo``, ``demo-quick``, ...) or a user's file.

A preset is a YAML file in ``eftclip/presets/`` (``configs/`` in the repository links to
them); ``load_experiment("demo")`` and ``load_experiment("path/to/file.yaml")`` read the
same way.  Unknown keys and values of the wrong type are errors that name the key and file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from eftclip.errors import EftclipError
from eftclip.pipeline.experiment import ExperimentConfig
from eftclip.pipeline.recipes import AttackSpec, DefenseSpec

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | os.PathLike) -> Path:
    """A preset's file by name, or the given path when it is a file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise EftclipError(f"{path}: config file not found")
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise EftclipError(f"--config: '{name_or_path}' is neither a file nor a preset "
                           f"(presets: {', '.join(preset_names())})")
    return candidate


def load_experiment(name_or_path: str | os.PathLike, **overrides: Any) -> ExperimentConfig:
    """Read a preset or YAML file; non-None ``overrides`` (dotted keys allowed) replace its values."""
    from eftclip.config import load_yaml

    path = preset_path(name_or_path)
    values = load_yaml(path)
    for key, value in overrides.items():
        if value is not None:
            _set_dotted(values, key, value)
    cfg = config_from_mapping(values, source=str(path))
    _validate(cfg, path)
    return cfg


def _validate(cfg: ExperimentConfig, path: Path) -> None:
    """The whole-config checks of :func:`eftclip.pipeline.checks.validate`, their errors naming ``path``."""
    from eftclip.pipeline.checks import validate
    from eftclip.pipeline.sources import build_source

    try:
        validate(cfg, build_source(cfg.source))
    except EftclipError as exc:
        raise EftclipError(f"{path}: {exc}") from None


def _set_dotted(values: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise EftclipError(f"{key}: '{part}' is not a mapping in the config")
    node[leaf] = value


def config_from_mapping(values: dict, *, source: str = "experiment config") -> ExperimentConfig:
    """An :class:`ExperimentConfig` from YAML data (lists of attacks and defenses included)."""
    from eftclip.config import from_mapping

    values = dict(values)
    attacks = _specs(values.pop("attacks", None), AttackSpec, f"{source}: attacks", by_name=True)
    defenses = _specs(values.pop("defenses", None), DefenseSpec, f"{source}: defenses", by_name=False)
    for key in ("seeds", "targets"):
        if key in values:
            values[key] = _tuple(values[key], f"{source}: {key}")
    cfg = from_mapping(ExperimentConfig, values, source=source)
    replace = {k: v for k, v in (("attacks", attacks), ("defenses", defenses)) if v is not None}
    return dataclasses.replace(cfg, **replace)


def _tuple(value: Any, where: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return (value,)
    raise EftclipError(f"{where}: expected a list, got {type(value).__name__}")


def _specs(raw: Any, cls: type, where: str, *, by_name: bool) -> tuple | None:
    from eftclip.config import from_mapping

    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise EftclipError(f"{where}: expected a non-empty list")
    out = []
    for i, item in enumerate(raw):
        if by_name and isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise EftclipError(f"{where}[{i}]: expected a mapping with 'name'")
        try:
            out.append(from_mapping(cls, item, source=f"{where}[{i}]"))
        except TypeError as exc:
            raise EftclipError(f"{where}[{i}]: {exc}") from exc
    return tuple(out)
