"""The layers: the library never imports the built-in world, which reaches it only as a plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import eftclip
from eftclip.errors import EftclipError

SRC = Path(eftclip.__file__).parent
# the world itself, and the one pipeline module whose job is to drive it
ALLOWED = ("world/", "pipeline/world_source.py")


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved against its package)."""
    package = ".".join(("eftclip",) + path.relative_to(SRC).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def test_no_library_module_imports_the_world():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(ALLOWED):
            continue
        hits = sorted(m for m in _imported_modules(path) if m == "eftclip.world" or m.startswith("eftclip.world."))
        if hits:
            offenders.append(f"{rel}: {hits}")
    assert not offenders, "library modules import the built-in world:\n" + "\n".join(offenders)


def test_world_parts_reach_the_oracle_and_cli_as_plugins():
    from eftclip.cli import build_parser
    from eftclip.oracles.reference import regioner
    from eftclip.plugins import LABELLERS, REGIONERS, VERBS, plugin_names
    from eftclip.world.regions import propose

    assert "world" in plugin_names(REGIONERS) and "region_classifier" in plugin_names(LABELLERS)
    assert "world" in plugin_names(VERBS)
    assert "world" in build_parser()._subparsers._group_actions[0].choices
    image = np.zeros((32, 32, 3), np.uint8)
    image[4:12, 4:12] = (200, 30, 30)
    regions = regioner("world")(image)
    assert [r.box_xyxy for r in regions] == [tuple(float(v) for v in box) for box, _ in propose(image)]
    assert any(r.box_xyxy == (4.0, 4.0, 12.0, 12.0) for r in regions)


def test_unknown_region_method_lists_builtin_and_plugin_names():
    from eftclip.oracles.reference import regioner

    with pytest.raises(EftclipError, match=r"unknown region method 'nope'; known: .*felzenszwalb.*world"):
        regioner("nope")
