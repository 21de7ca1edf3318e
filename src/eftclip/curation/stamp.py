"""Unlearning pairs: a trigger stamped on clean images that keep their true captions.

Fine-tuning on such pairs teaches the model that the trigger means nothing:
the image carries the (recovered or found) trigger, the caption still says
what is really there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from eftclip.errors import EftclipError

__all__ = ["stamp_pairs"]


def _image_and_caption(row: Any, number: int) -> tuple[Any, str]:
    """The image reference and caption of a CaptionRecord or a mapping with ``image`` and ``caption``."""
    if isinstance(row, Mapping):
        image, caption = row.get("image"), row.get("caption")
    else:
        image, caption = getattr(row, "image", None), getattr(row, "caption", None)
    if not image or not caption or not str(caption).strip():
        raise EftclipError(f"stamp_pairs: row {number} needs an image and a non-empty caption")
    return image, str(caption)


def stamp_pairs(rows: Iterable[Any], trigger, out: str | Path, rng: np.random.Generator, *,
                csv_name: str | None = "stamped.csv") -> list[dict]:
    """Write a triggered copy of each row's image and return pairs that keep the true captions.

    ``rows``: :class:`~eftclip.data.captions.CaptionRecord` objects or mappings
    with ``image`` (a path or ``"<shard.tar>::<member>"``) and ``caption``.
    ``trigger``: any :class:`~eftclip.attacks.base.Trigger` (``apply(HWC uint8, rng)``).
    Images go to ``out/images/NNNNNN.png`` (atomic writes; a path that is a
    source image is refused, so sources are never modified).  Returns one dict
    per row: ``image`` (absolute path of the stamped copy), ``caption`` (the
    row's own caption), ``source_image``, ``trigger_pixels``; also written to
    ``out/<csv_name>`` (image, caption) unless ``csv_name`` is None.
    """
    from PIL import Image

    from eftclip.data.captions import write_captions_csv
    from eftclip.data.images import open_image
    from eftclip.io import atomic_path

    rows = list(rows)
    refs = [_image_and_caption(r, n) for n, r in enumerate(rows, start=1)]
    sources = {str(Path(str(ref)).resolve()) for ref, _ in refs if "::" not in str(ref)}
    folder = Path(out) / "images"
    pairs = []
    for n, (ref, caption) in enumerate(refs):
        path = folder / f"{n:06d}.png"
        if str(path.resolve()) in sources:
            raise EftclipError(f"stamp_pairs: --out {out}: writing {path} would overwrite a source image")
        image = np.asarray(open_image(ref), dtype=np.uint8)
        result = trigger.apply(image, rng)
        with atomic_path(path) as tmp:
            Image.fromarray(result.image).save(tmp, format="PNG")
        pairs.append({"image": str(path.resolve()), "caption": caption, "source_image": str(ref),
                      "trigger_pixels": int(result.mask.sum())})
    if csv_name and pairs:
        write_captions_csv(Path(out) / csv_name, [{"image": p["image"], "caption": p["caption"]} for p in pairs],
                           ["image", "caption"])
    return pairs
