"""Parts that packages above the library register by name, through Python entry points.

The library never imports the packages that build on it (the built-in world, a
user's own package).  Those declare their parts as entry points in their
``pyproject.toml`` and the library finds them by group and name:

- ``eftclip.regioners``: ``(image HWC uint8, **kwargs) -> [Region | (box XYXY pixels, mask HW bool | None)]``,
  region proposals for the reference oracle (``regions=NAME``);
- ``eftclip.labellers``: ``(path) -> labeller``, a file loader whose labeller maps
  ``list[HWC uint8]`` to probabilities ``(N, C)`` and has ``.classnames``
  (the reference oracle's ``region_classifier=PATH``);
- ``eftclip.verbs``: ``register(subparsers) -> argparse.ArgumentParser``, a
  command-line verb (``eftclip NAME``).

The built-in world registers ``world`` (regioner and verb) and
``region_classifier`` (labeller) in this project's ``pyproject.toml``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from eftclip.errors import EftclipError

REGIONERS = "eftclip.regioners"
LABELLERS = "eftclip.labellers"
VERBS = "eftclip.verbs"


def plugin_names(group: str) -> list[str]:
    """The names registered in entry-point ``group``, sorted."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load_plugin(group: str, name: str, *, what: str, builtin: tuple[str, ...] = ()) -> Any:
    """The object registered as ``name`` in ``group`` (``what`` names the kind in errors).

    Raises:
        EftclipError: nothing is registered under ``name``; the message lists
            the known names (``builtin`` ones included) and how plugins register.
    """
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        known = ", ".join(sorted(set(builtin) | set(plugin_names(group))))
        raise EftclipError(
            f"unknown {what} {name!r}; known: {known} (packages add names through the "
            f"{group!r} entry points: reinstall eftclip, `pip install -e .`, if a built-in one is missing)"
        )
    return found[0].load()
