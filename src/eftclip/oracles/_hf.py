"""Shared plumbing of the transformers-based oracles (extra ``hf``).

Weights come from a local ``save_pretrained`` folder or a hub id
(``google/owlv2-base-patch16-ensemble``).  A hub id goes through
huggingface_hub's cache (downloaded when online and missing); offline
(``HF_HUB_OFFLINE=1``) or without network, an uncached id is one
:class:`~eftclip.errors.EftclipError` naming it and saying how to get it
(:func:`eftclip.models.hub.unavailable`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from eftclip.errors import EftclipError, MissingExtraError

# a hub repo id: "org/name" (one slash, no path-like start); anything else is a folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        raise EftclipError(f"{what} needs a local model folder or hub id (model_path=...)")
    path = Path(path)
    if not path.is_dir():
        raise EftclipError(f"{path}: {what} model folder not found (a save_pretrained folder is expected)")
    if not (path / "config.json").is_file():
        raise EftclipError(f"{path}: no config.json in this {what} model folder")
    return path


def model_source(path: str | os.PathLike | None, what: str) -> Path | str:
    """A local folder (checked by :func:`local_folder`) or a hub id ``org/name`` (a str).

    An existing folder wins over a hub id of the same spelling.
    """
    if path is not None and not Path(path).is_dir() and _HUB_ID.match(os.fspath(path)):
        return os.fspath(path)
    return local_folder(path, what)


def load_pretrained(cls, source: Path | str, what: str, **kwargs):
    """``cls.from_pretrained(source)`` from a folder or through the hub cache, errors naming the source."""
    from eftclip.models.hub import hub_cache_dir, hub_offline, unavailable

    if isinstance(source, Path):
        try:
            return cls.from_pretrained(str(source), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise EftclipError(f"{source}: cannot load the {what} from this folder ({exc})") from exc
    try:
        return cls.from_pretrained(source, cache_dir=os.fspath(hub_cache_dir()),
                                   local_files_only=hub_offline(), **kwargs)
    except OSError as exc:  # transformers' "not cached / cannot connect / no such repo"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise unavailable(what, source, ["config and weights"], reason,
                          local="a local save_pretrained folder instead of the hub id") from None
    except (ValueError, KeyError) as exc:
        raise EftclipError(f"hub id {source}: cannot load the {what} ({exc})") from exc
