"""An experiment's output folder: claimed for one run, refused when it holds anything else.

``run.json`` in the folder records the kind of run (demo, study, defend) and its
resolved configuration.  A folder that holds anything else (another kind of run,
another configuration, unrelated files) is refused unless the user says
``resume`` (continue with the new configuration; finished stages live in the
stage cache and are kept) or ``force`` (delete the folder's contents and start
over; only a folder eftclip made).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from eftclip.errors import EftclipError
from eftclip.io import portable_paths, read_json, write_json
from eftclip.pipeline.recipes import without_legacy_defaults


def claim_folder(out: Path, *, kind: str, config: dict[str, Any], resume: bool, force: bool) -> None:
    """Make ``out`` this run's folder: refuse one that holds another run or other files.

    ``resume`` continues a run of the same kind made with another configuration (finished
    stages are kept); ``force`` deletes the folder's contents first.  Writes ``run.json``.
    """
    out = Path(out)
    # plain JSON data, comparable; paths relative to the folder (run.json may be committed with it)
    config = portable_paths(json.loads(json.dumps(config)), out.resolve())
    run_file = out / "run.json"
    if out.exists() and any(out.iterdir()):
        if not run_file.exists():
            raise EftclipError(
                f"{out}: folder is not empty and holds no eftclip {kind} run; choose another --out "
                "(--force deletes only a folder eftclip made)")
        if force:
            _empty(out)
        else:
            _check_previous(out, read_json(run_file), kind=kind, config=config, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"kind": kind, "config": config})


def _empty(out: Path) -> None:
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _check_previous(out: Path, previous: dict, *, kind: str, config: dict, resume: bool) -> None:
    if previous.get("kind") != kind:
        raise EftclipError(
            f"{out}: holds an eftclip {previous.get('kind')!r} run, not a {kind}; "
            "choose another --out, or pass --force to delete it")
    # a field added since, at the value every earlier run had, is no difference (recipes.KEYED_UNLESS)
    # (and a run.json written before paths were stored relative to the folder is read the same way)
    before = without_legacy_defaults(portable_paths(previous.get("config", {}), out.resolve()))
    now = without_legacy_defaults(config)
    if before != now and not resume:
        diff = sorted(_diff_keys(before, now))
        raise EftclipError(
            f"{out}: holds an eftclip {kind} run with another configuration "
            f"(differs in: {', '.join(diff[:8])}); pass --resume to continue it with the "
            "new settings (finished stages are kept) or --force to start over")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".") or "(root)"}
