"""``eftclip <verb>``: a thin command line over the library.

Each verb lives in a module of this package that defines
``register(subparsers) -> argparse.ArgumentParser`` and sets ``func`` (a
callable taking the parsed ``argparse.Namespace`` and returning an exit code
or ``None``) as the parser default.  Flags are kebab-case.  A verb that takes
``--config FILE`` reads YAML defaults that the other flags override (see
:mod:`eftclip.config`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from eftclip import __version__
from eftclip.cli.failures import resource_message
from eftclip.errors import EftclipError

# verb module names, in the order of the pipeline; a missing module is skipped
# so that the command line works while stages are being added
VERBS = [
    "poison",
    "train",
    "finetune",
    "evaluate",
    "detect",
    "curate",
    "defend",
    "sweep",
    "demo",
    "study",
    "convert",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eftclip",
        description="Find and remove backdoors in CLIP models (EftCLIP).",
    )
    parser.add_argument("--version", action="version", version=f"eftclip {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name in VERBS:
        try:
            module = importlib.import_module(f"eftclip.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"eftclip.cli.{name}":
                continue
            raise
        module.register(sub)
    _register_plugin_verbs(sub)
    return parser


def _register_plugin_verbs(sub: argparse._SubParsersAction) -> None:
    """Verbs that packages above the library add (``eftclip.verbs`` entry points; the built-in world's ``world``)."""
    from importlib.metadata import entry_points

    from eftclip.plugins import VERBS as GROUP

    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name not in sub.choices:
            ep.load()(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except EftclipError as exc:
        print(f"eftclip: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, MemoryError, RuntimeError, AssertionError) as exc:
        # a full disk, a missing CUDA device: one named line; anything unrecognised is a bug and keeps its traceback
        message = resource_message(exc)
        if message is None:
            raise
        print(f"eftclip: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("eftclip: interrupted; run the same command again to continue "
              "(train and finetune: add --resume)", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
