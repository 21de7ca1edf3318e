"""Helpers for the tests of verbs whose flags are generated from a config dataclass."""

from __future__ import annotations

import argparse
import dataclasses


def verb_parser(module) -> argparse.ArgumentParser:
    """The parser ``module.register`` (an ``eftclip.cli`` verb) builds, on its own."""
    return module.register(argparse.ArgumentParser(prog="eftclip").add_subparsers())


def fields_without_flag(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> set[str]:
    """The fields of ``cls`` (less ``skip``) that no option of ``parser`` sets."""
    dests = {a.dest for a in parser._actions if a.option_strings}
    return {f.name for f in dataclasses.fields(cls)} - set(skip) - dests


def flags_not_parsed(parser: argparse.ArgumentParser, flags: list[str]) -> list[str]:
    """The option strings of ``flags`` that ``parser`` does not know."""
    return [f for f in flags if f not in parser._option_string_actions]
