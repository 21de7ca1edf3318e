"""Shared plumbing of the transformers-based oracles (extra ``hf``)."""

from __future__ import annotations

import os
from pathlib import Path

from eftclip.errors import EftclipError, MissingExtraError


def import_transformers(what: str):
    """``transformers``, or MissingExtraError naming the ``hf`` extra."""
    try:
        import transformers
    except ImportError:
        raise MissingExtraError(what, "hf", "transformers") from None
    return transformers


def local_folder(path: str | os.PathLike | None, what: str) -> Path:
    """``path`` as a folder saved with ``save_pretrained``; EftclipError naming it otherwise."""
    if path is None:
        raise EftclipError(f"{what} needs a local model folder (model_path=...)")
    path = Path(path)
    if not path.is_dir():
        raise EftclipError(f"{path}: {what} model folder not found (a save_pretrained folder is expected)")
    if not (path / "config.json").is_file():
        raise EftclipError(f"{path}: no config.json in this {what} model folder")
    return path


def load_pretrained(cls, path: Path, what: str, **kwargs):
    """``cls.from_pretrained(path, local_files_only=True)`` with errors that name the folder."""
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise EftclipError(f"{path}: cannot load the {what} from this folder ({exc})") from exc
