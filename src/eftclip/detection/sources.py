"""The images a detection run examines and its label vocabulary."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from eftclip.errors import EftclipError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageItem:
    """One image to examine."""

    key: str  # unique id (the caption table's key, or the path relative to the folder)
    ref: str  # where it lives (path, or "<shard.tar>::<member>"), written to the outputs
    is_poisoned: bool | None  # ground truth when the table has an is_poisoned column
    caption: str | None  # its caption, when there is one
    load: Callable[[], Any] = field(compare=False, repr=False)  # () -> PIL RGB image


def list_images(spec: str | os.PathLike, *, on_error: str = "skip") -> tuple[list[ImageItem], list[dict]]:
    """The images of a caption table or a folder, and the rows that could not be read.

    A folder is walked recursively for image files (sorted; key = relative
    path, no ground truth).  Anything else is read with
    ``eftclip.data.captions.read_captions`` (``is_poisoned`` and captions kept).
    Skipped rows are ``{"source", "row", "reason"}``.
    """
    path = Path(spec)
    if path.is_dir() and not any(path.glob("*.tar")):
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EftclipError(f"{path}: no image files found in the folder")
        items = [
            ImageItem(p.relative_to(path).as_posix(), str(p), None, None, _file_loader(p)) for p in files
        ]
        return items, []
    from eftclip.data.captions import open_image, read_captions

    table = read_captions(spec, on_error=on_error, check_images=False)
    items = [
        ImageItem(r.key, r.image, r.is_poisoned, r.caption, _record_loader(open_image, r)) for r in table.records
    ]
    skipped = [{"source": s.source, "row": s.row, "reason": s.reason} for s in table.skipped]
    if not items:
        raise EftclipError(f"{spec}: no usable rows")
    return items, skipped


def check_unique_keys(items: Sequence[ImageItem], source: str) -> None:
    """Records are matched by key on resume and merge: a repeated key is an error naming it."""
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise EftclipError(f"{source}: key {dup!r} occurs more than once; keys must be unique")


def _file_loader(path: Path):
    def load():
        from PIL import Image

        with Image.open(path) as im:
            return im.convert("RGB")

    return load


def _record_loader(open_image, record):
    return lambda: open_image(record)


def resolve_vocab(cfg: Any, items: Sequence[ImageItem]) -> list[str]:
    """The vocabulary of the run, the user's labels (and the target) always included.

    ``cfg`` has ``vocab``, ``labels``, ``target``, ``vocab_size``, ``vocab_min_count``
    and ``images`` (a DetectConfig, or the sweep's view of its own config).
    """
    from eftclip.detection.vocab import load_vocab, mine_vocab

    extra = list(cfg.labels) + ([cfg.target] if cfg.target else [])
    if cfg.vocab == "mined":
        captions = [it.caption for it in items if it.caption]
        if not captions:
            raise EftclipError(f"--vocab mined needs captions, and {cfg.images} has none; pass --vocab FILE")
        return mine_vocab(captions, min_count=cfg.vocab_min_count, max_size=cfg.vocab_size, extra=extra)
    return load_vocab(cfg.vocab, extra=extra)
