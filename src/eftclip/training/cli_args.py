"""Command-line flags generated from the training configs, so flags, defaults and help agree.

Every field of :class:`TrainConfig` / :class:`FinetuneConfig` becomes a
kebab-case flag (``batch_size`` -> ``--batch-size``) whose help is the comment
beside the field; booleans get ``--x/--no-x``.  Flags default to None so that
the precedence is: dataclass default < ``--config FILE`` (YAML) < flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from typing import Any

from eftclip.config import from_mapping, load_yaml, merge
from eftclip.errors import EftclipError

_COMMENT = re.compile(r"^\s+(\w+):\s*[^=]+=.*?#\s*(.+)$")


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


def _scalar_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        hint = args[0]
    return hint if hint in (int, float, str, bool) else str


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ("records",),
                     required: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass ``cls`` (plus ``--config FILE``)."""
    parser.add_argument("--config", metavar="FILE", help="YAML file of defaults; flags override it")
    helps = _field_help(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _scalar_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{helps.get(f.name, '')} (default: {default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper(), help=text,
                                required=f.name in required)


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """Build ``cls`` from dataclass defaults, ``--config`` YAML and the flags given."""
    names = {f.name for f in dataclasses.fields(cls)} - {"records"}
    base = load_yaml(args.config) if getattr(args, "config", None) else {}
    base = {k.replace("-", "_"): v for k, v in base.items()}
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    try:
        return from_mapping(cls, merge(base, overrides), source=args.config or "flags")
    except TypeError as exc:
        raise EftclipError(f"bad configuration: {exc}") from None
