"""Configuration: frozen dataclasses, YAML defaults, command-line overrides.

The order of precedence is the one timm uses: dataclass defaults, then a YAML
file (``--config FILE``), then explicit flags.  YAML is parsed with
``yaml.safe_load`` (never ``eval``).  Every run writes its resolved config as
``config.yaml`` beside its outputs with :func:`write_config`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
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


def from_mapping(cls: type[T], values: Mapping[str, Any], *, source: str = "config", _nested: bool = False) -> T:
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
            value = from_mapping(target, value, source=f"{source}.{key}", _nested=True)
        elif target is not None:
            # "run.yaml: epochs" at the top, "study.yaml.pretrain.epochs" inside a nested section
            value = check_value(value, target, f"{source}.{key}" if _nested else f"{source}: {key}")
        kwargs[name] = value
    missing = [n for n, f in fields.items() if f.init and n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise EftclipError(f"{source}: missing required key(s): {', '.join(missing)}")
    return cls(**kwargs)


def check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (and lightly converted), else an error naming ``where``.

    Catches what YAML lets through before any heavy stage runs: ``epochs: 1.5``,
    ``lr: "fast"``, ``theta: "high"``, ``lr: .inf``.  Conversions: a float field
    takes an int or a numeric string (YAML 1.1 reads ``1e-5`` as a string);
    a tuple field takes a list.  ``where`` names the file and key, e.g. ``"run.yaml: lr"``;
    the message reads ``"run.yaml: lr: expected float (a finite number), got 'fast'"``.
    """
    ok, converted = _conforms(value, hint)
    if not ok:
        raise EftclipError(f"{where}: expected {_short(hint)} ({_describe(hint)}), got {value!r}")
    return converted


def _conforms(value: Any, hint: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is None or isinstance(hint, typing.TypeVar):
        return True, value
    if hint is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _conforms(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in args, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        return _as_float(value)
    if hint is str:
        return isinstance(value, str), value
    if origin in (tuple, list) or hint in (tuple, list):
        return _sequence(value, origin or hint, args)
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, Mapping), value
    return True, value  # a type this checker does not know: the dataclass itself decides


def _as_float(value: Any) -> tuple[bool, Any]:
    if isinstance(value, bool):
        return False, value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False, value
    if not isinstance(value, (int, float)):
        return False, value
    # NaN and infinity are never a sensible setting, and a NaN lr trains a NaN model
    return math.isfinite(value), float(value)


def _sequence(value: Any, kind: type, args: tuple) -> tuple[bool, Any]:
    if not isinstance(value, (list, tuple)):
        return False, value
    if not args:
        return True, kind(value)
    item_types = [args[0]] * len(value) if len(args) == 1 or args[-1] is Ellipsis else list(args)
    if len(item_types) != len(value):
        return False, value
    items = []
    for item, hint in zip(value, item_types):
        ok, converted = _conforms(item, hint)
        if not ok:
            return False, value
        items.append(converted)
    return True, kind(items)


def _short(hint: Any) -> str:
    # the type as Python spells it: int, float/null, list
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return "/".join(_short(a) for a in args)
    if hint is type(None):
        return "null"
    return getattr(origin or hint, "__name__", str(hint))


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        return f"a list (each {_describe(args[0])})" if args else "a list"
    names = {int: "a whole number", float: "a finite number", str: "a string", bool: "true or false",
             type(None): "null", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


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


def cli_flag(name: str | None = None, *, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A config field's ``metadata`` for its generated command-line flag (:mod:`eftclip.cli.config_flags`).

    ``name`` replaces the flag made from the field's name (``"--template"`` for ``templates``; a bool
    named ``"--clean"`` reads ``--clean/--no-clean``); ``choices``: the values the flag accepts.
    Usage: ``mode: str = field(default="robust", metadata=cli_flag(choices=MODES))``.
    """
    meta: dict[str, Any] = {}
    if name is not None:
        meta["flag"] = name
    if choices is not None:
        meta["choices"] = tuple(choices)
    return meta


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
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # forward references we cannot resolve: treat as opaque
            return None
        return hints.get(name)
    return ftype
