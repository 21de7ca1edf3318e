"""Command-line flags generated from a config dataclass, so flags, defaults and help agree.

Every field of the dataclass becomes a flag (``batch_size`` -> ``--batch-size``) whose help is the
comment beside the field, ending with the dataclass default (generated, never typed).  Flags default
to None, so the precedence is: dataclass default < ``--config FILE`` (YAML) < flag.  A field's type
decides how its flag reads:

- ``int`` / ``float`` / ``str`` (or ``X | None``): one value of that type;
- ``bool``: ``--x`` / ``--no-x``;
- ``tuple[T, ...]``: comma-separated values of ``T``, and repeatable, the items of every use joined
  (``--rho 8,16`` = ``--rho 8 --rho 16``); an item holding a comma is quoted as in CSV
  (``--template '"a photo of a {}, small."'``);
- ``dict``: repeatable ``KEY=VALUE``, decoded by the one parser,
  :func:`eftclip.cli.values.parse_key_values` (VALUE as JSON when it parses, else a string).

A field's metadata (:func:`eftclip.config.cli_flag`) may rename its flag (``"--template"`` for
``templates``; a bool renamed ``"--clean"`` gives ``--clean/--no-clean``) and list its choices.  A
field without a default is required, on the command line or in ``--config``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from eftclip.cli.values import parse_key_values
from eftclip.config import from_mapping, load_yaml, merge
from eftclip.errors import EftclipError

# "    name: type = default  # help", the default optional (a required field has none)
_COMMENT = re.compile(r"^\s+(\w+):\s*[^=#]+(?:=.*?)?#\s*(.+)$")
_SCALARS = (int, float, str, bool)


def _field_help(cls: type) -> dict[str, str]:
    """The comment beside each field, read from ``cls`` and the config pieces it is composed of."""
    out = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        for line in inspect.getsource(klass).splitlines():
            m = _COMMENT.match(line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


def flag_name(f: dataclasses.Field) -> str:
    """The field's flag: ``--batch-size`` for ``batch_size``, unless its metadata names another."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _shape(hint: Any) -> tuple[type, type]:
    """``(container, item type)`` of a field's type hint.

    ``(tuple, int)`` for ``tuple[int, ...]`` (lists read the same), ``(dict, str)`` for a mapping,
    ``(object, float)`` for ``float`` or ``float | None``; a type the flags cannot spell reads as ``str``.
    """
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next((a for a in typing.get_args(hint) if a is not type(None)), str)
    origin = typing.get_origin(hint) or hint
    if origin in (tuple, list):
        item = next((a for a in typing.get_args(hint) if a is not Ellipsis), str)
        return tuple, item if item in (int, float, str) else str
    if origin in (dict, Mapping):
        return dict, str
    return object, hint if hint in _SCALARS else str


def _default_text(f: dataclasses.Field) -> str:
    """``"default: 8,16"`` (a tuple or dict as it is typed; ``"default: none"`` when empty), or the
    required field's ``"required, here or in --config"``."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required, here or in --config"
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, (tuple, list)):
        return "default: " + (",".join(map(str, value)) if value else "none")
    return f"default: {value}"


def _add_flag(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any, comment: str) -> None:
    """One generated flag for field ``f``; raw strings of tuples and dicts are decoded by config_from_args."""
    container, item = _shape(hint)
    name, choices = flag_name(f), f.metadata.get("choices")
    # argparse %-formats help text: a literal % in a comment must not break --help
    text = f"{comment} ({_default_text(f)})".replace("%", "%%").lstrip()
    if container is dict:
        parser.add_argument(name, dest=f.name, action="append", metavar="KEY=VALUE",
                            help=f"{text}; repeatable, VALUE read as JSON when it parses")
    elif container is tuple:
        parser.add_argument(name, dest=f.name, action="append", metavar=f"{item.__name__.upper()},...",
                            help=f"{text}; comma-separated, repeatable")
    elif item is bool:
        parser.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
    else:
        parser.add_argument(name, dest=f.name, type=item, default=None, choices=choices,
                            metavar=None if choices else f.name.upper(), help=text)


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ("records",)) -> None:
    """Add ``--config FILE`` and one flag per field of dataclass ``cls`` but those in ``skip``.

    The required fields come first in ``--help``, then the others in the order they are declared.
    """
    parser.add_argument("--config", metavar="FILE", help="YAML file of defaults (keys as in the config's fields); "
                                                         "flags override it")
    helps = _field_help(cls)
    hints = typing.get_type_hints(cls)
    for f in sorted(dataclasses.fields(cls), key=lambda f: not _required(f)):  # sorted() is stable
        if f.name not in skip:
            _add_flag(parser, f, hints[f.name], helps.get(f.name, ""))


def _items(text: str, item: type, flag: str) -> list:
    """``"8, 16"`` -> ``[8, 16]`` for ``item`` int; empty items are dropped.  A bad one: EftclipError naming ``flag``."""
    try:
        values = [item(v.strip()) for v in next(csv.reader([text], skipinitialspace=True), []) if v.strip()]
    except (ValueError, csv.Error):
        values = None
    if values is None or any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise EftclipError(f"{flag} {text!r}: expected comma-separated {item.__name__} values")
    return values


def _decode(raw: Any, hint: Any, flag: str) -> Any:
    """A flag's parsed value as the field takes it: tuples and dicts from their lists of raw strings."""
    container, item = _shape(hint)
    if container is dict:
        return parse_key_values(raw, flag)
    if container is tuple:
        return tuple(v for text in raw for v in _items(text, item, flag))
    return raw


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line, decoded (flags left out are absent)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _decode(getattr(args, f.name), hints[f.name], flag_name(f))
            for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def _required(f: dataclasses.Field) -> bool:
    """A field the dataclass gives no default."""
    return f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check_required(cls: type, values: Mapping[str, Any]) -> None:
    for f in dataclasses.fields(cls):
        if _required(f) and values.get(f.name) in (None, ""):
            raise EftclipError(f"{flag_name(f)} is required (on the command line or in --config)")


def config_from_args(args: argparse.Namespace, cls: type, *, implied: Mapping[str, Any] | None = None) -> Any:
    """Build ``cls`` from dataclass defaults, ``--config`` YAML and the flags given.

    ``implied``: values other flags imply (e.g. ``{"oracle_args": {...}}`` from ``--oracle-model``);
    they sit above the YAML and below the config's own flags.  Mappings merge key by key.
    """
    config = getattr(args, "config", None)
    base = load_yaml(config) if config else {}
    base = {k.replace("-", "_"): v for k, v in base.items()}
    values = merge(merge(base, implied or {}), flag_values(args, cls))
    _check_required(cls, values)
    try:
        return from_mapping(cls, values, source=config or "flags")
    except TypeError as exc:
        raise EftclipError(f"bad configuration: {exc}") from None
