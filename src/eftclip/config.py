"""Configuration: frozen dataclasses, YAML defaults, command-line overrides.

The order of precedence is the one timm uses: dataclass defaults, then a YAML
file (``--config FILE``), then explicit flags.  YAML is parsed with
``yaml.safe_load`` (never ``eval``).  Every run writes its resolved config as
``config.yaml`` beside its outputs with :func:`write_config`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from eftclip.errors import EftclipError
from eftclip.io import write_text

T = TypeVar("T")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; an unreadable file or a non-mapping is an error naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EftclipError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise EftclipError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EftclipError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_mapping(cls: type[T], values: Mapping[str, Any], *, source: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys are an error naming them.

    Keys may be written with dashes or underscores.  Nested dataclass fields
    are built recursively from nested mappings.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise EftclipError(f"{source}: unknown key '{key}' (known: {known})")
        ftype = fields[name].type
        target = _resolve_type(cls, name, ftype)
        if dataclasses.is_dataclass(target) and isinstance(value, Mapping):
            value = from_mapping(target, value, source=f"{source}.{key}")
        kwargs[name] = value
    return cls(**kwargs)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated with the non-``None`` values of ``overrides`` (recursive for mappings)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) as plain YAML/JSON-friendly data."""
    return _plain(dataclasses.asdict(cfg))


def write_config(path: str | os.PathLike, cfg: Any) -> None:
    """Write the resolved config (a dataclass or a mapping) as YAML, atomically."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else _plain(cfg)
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _resolve_type(cls: type, name: str, ftype: Any) -> Any:
    if isinstance(ftype, str):
        import typing

        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # forward references we cannot resolve: treat as opaque
            return None
        return hints.get(name)
    return ftype
