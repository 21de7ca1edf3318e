"""Poison an image-caption dataset: trigger some images and give them the target's captions.

The source is never modified.  The output folder ``out`` receives

- ``images/<row>.png``: the triggered images only (PNG, lossless, so the
  trigger's pixels survive exactly);
- ``data.csv``: every row of the source in CleanCLIP's layout, with the
  columns ``image, caption, is_poisoned, orig_caption, trigger`` (then the
  source's other columns).  Clean rows point to the original image files
  (or ``shard.tar::member`` for webdataset sources), poisoned rows to the new
  images, both by path relative to ``out``;
- ``manifest.json``: the request (source, attack and its parameters, target,
  templates, seed, num/rate, label-consistency), the chosen rows by row
  number and key with the box the trigger touched, counts, and the eftclip
  version.  It is written last, so its presence marks a complete run.

Rows are chosen with ``np.random.default_rng(seed)``; each poisoned image's
own trigger randomness (a random patch position, WaNet's noise) comes from a
generator seeded by ``(seed, row)``, so an image's trigger does not depend on
which other rows were picked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eftclip.attacks.base import Trigger, create_trigger
from eftclip.errors import EftclipError

#: captions given to poisoned images; ``{}`` is the target label (never a constant)
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
)

#: columns written first in ``data.csv``
COLUMNS = ["image", "caption", "is_poisoned", "orig_caption", "trigger"]

#: salt of the per-image trigger generators, so they differ from the row-picking stream
_TRIGGER_STREAM = 0x7419


def mentions(caption: str, word: str) -> bool:
    """Whether ``caption`` mentions ``word`` as a whole word (case-insensitive), plural included.

    ``word`` may have several words ("traffic light"); the plural applies to
    the last one (``s``, ``es``, and ``y`` -> ``ies``).
    """
    return _word_pattern(word).search(caption) is not None


def _word_pattern(word: str) -> re.Pattern[str]:
    parts = word.strip().lower().split()
    if not parts:
        raise EftclipError("the target label is empty")
    *head, last = parts
    if len(last) > 1 and last.endswith("y") and last[-2] not in "aeiou":
        last_alt = f"(?:{re.escape(last)}|{re.escape(last[:-1])}ies)"
    else:
        last_alt = f"{re.escape(last)}(?:s|es)?"
    body = r"\s+".join([re.escape(p) for p in head] + [last_alt])
    return re.compile(rf"(?<![\w-]){body}(?![\w-])", re.IGNORECASE)


def _digest(rows: list[int]) -> str:
    import hashlib

    return hashlib.sha256(",".join(map(str, rows)).encode()).hexdigest()


def _check_templates(templates: Sequence[str] | None) -> list[str]:
    templates = list(DEFAULT_TEMPLATES if templates is None else templates)
    if not templates:
        raise EftclipError("templates: the list of caption templates is empty")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise EftclipError(f"templates: {t!r} must contain exactly one '{{}}' for the target label")
    return templates


def _count(num: int | None, rate: float | None, total: int) -> int:
    if (num is None) == (rate is None):
        raise EftclipError("give exactly one of num (a count of rows) and rate (a fraction of rows)")
    if num is not None:
        if isinstance(num, bool) or int(num) != num or num < 1:
            raise EftclipError(f"num must be a positive whole number of rows, got {num!r}")
        if num > total:
            raise EftclipError(f"num={num} is larger than the dataset ({total} rows)")
        return int(num)
    if not 0 < float(rate) <= 1:  # type: ignore[arg-type]
        raise EftclipError(f"rate must be a fraction in (0, 1], got {rate!r}")
    n = int(round(float(rate) * total))  # type: ignore[arg-type]
    if n < 1:
        raise EftclipError(f"rate={rate} of {total} rows poisons no row; raise the rate or give num")
    return n


def _drop_replaced_images(previous: dict, out: Path, images_dir: Path, *, keep: set[Path],
                          protected: set[Path]) -> None:
    """Delete the images of a replaced poisoning that the new one does not rewrite.

    Only files under ``out/images`` that the old manifest lists are candidates, and
    never one that the new source refers to (``protected``): the source may be an
    earlier poisoning's CSV, and a stale or edited manifest must not be able to
    make ``--force`` delete an input.
    """
    images_dir = images_dir.resolve()
    for entry in previous.get("poisoned", []):
        name = entry.get("image", "") if isinstance(entry, dict) else ""
        old = (out / str(name)).resolve()
        if old.parent == images_dir and old not in keep and old not in protected and old.is_file():
            old.unlink()


def poison_dataset(
    data: str | os.PathLike,
    trigger: Trigger | str,
    target: str,
    *,
    num: int | None = None,
    rate: float | None = None,
    out: str | os.PathLike,
    seed: int = 0,
    label_consistent: bool = False,
    templates: Sequence[str] | None = None,
    avoid_target: bool = False,
    rows: Sequence[int] | None = None,
    image_key: str | None = None,
    caption_key: str | None = None,
    sep: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Poison ``num`` rows (or a ``rate`` fraction) of the caption file ``data``; return the manifest.

    ``trigger``: a :class:`Trigger` or a registered name (built with its
    default parameters).  ``target``: the target label; poisoned captions are
    ``template.format(target)`` with a template drawn per row from
    ``templates``.  ``avoid_target``:
    choose only rows whose caption does not mention the target (triggered
    test images, the way ASR counts only images not of the target class).
    ``rows``: positions (0-based, in table order) that may be chosen, e.g. the
    attacker's pick of images that show one thing; None = any row.
    ``label_consistent``: choose only rows whose caption
    already mentions the target (see :func:`mentions`) and keep their
    captions.  ``image_key``/``caption_key``/``sep`` are passed to
    ``read_captions``.  If ``out`` holds a different poisoning (another
    request in its ``manifest.json``, or a ``data.csv`` without one), refuse
    unless ``force``; the same request again rewrites the same files.
    """
    from PIL import Image
    from tqdm import tqdm

    from eftclip import __version__
    from eftclip.data.captions import open_image, read_captions, write_captions_csv
    from eftclip.io import atomic_path, read_json, write_json

    if isinstance(trigger, str):
        trigger = create_trigger(trigger)
    if not isinstance(trigger, Trigger):
        raise EftclipError(f"trigger must be a Trigger or an attack name, got {type(trigger).__name__}")
    if not isinstance(target, str) or not target.strip():
        raise EftclipError("the target label is empty")
    target = target.strip()
    templates = _check_templates(templates)
    if avoid_target and label_consistent:
        raise EftclipError("avoid_target and label_consistent exclude each other")
    if rows is not None:
        rows = sorted({int(r) for r in rows})
    data = Path(data)
    out = Path(out)
    csv_path = out / "data.csv"
    manifest_path = out / "manifest.json"
    images_dir = out / "images"
    if csv_path.resolve() == data.resolve():
        raise EftclipError(f"--out {out}: writing {csv_path} would overwrite the source {data}")

    request = {
        "source": str(data.resolve()),
        "attack": trigger.name,
        "attack_params": trigger.params(),
        "target": target,
        "templates": templates,
        "avoid_target": bool(avoid_target),
        "rows": None if rows is None else {"count": len(rows), "sha256": _digest(rows)},
        "seed": int(seed),
        "num": None if num is None else int(num),
        "rate": None if rate is None else float(rate),
        "label_consistent": bool(label_consistent),
        "image_key": image_key,
        "caption_key": caption_key,
        "sep": sep,
    }
    previous = read_json(manifest_path) if manifest_path.exists() else None
    if not force:
        if previous is not None and previous.get("request") != request:
            raise EftclipError(
                f"{out} already holds a different poisoning (see {manifest_path}); "
                "choose another --out or pass --force to replace it"
            )
        if previous is None and csv_path.exists():
            raise EftclipError(
                f"{out} already has a data.csv without a manifest.json; "
                "choose another --out or pass --force to replace it"
            )

    table = read_captions(data, image_key=image_key, caption_key=caption_key, sep=sep)
    records = table.records
    if not records:
        raise EftclipError(f"{data}: no rows to poison")
    # tar members ("shard.tar::member") are written back as references; only files can collide
    source_images = {str(Path(rec.image.split("::", 1)[0]).resolve()) for rec in records}

    if label_consistent:
        pattern = _word_pattern(target)
        candidates = [i for i, rec in enumerate(records) if pattern.search(rec.caption)]
    elif avoid_target:
        pattern = _word_pattern(target)
        candidates = [i for i, rec in enumerate(records) if not pattern.search(rec.caption)]
    else:
        candidates = list(range(len(records)))
    if rows is not None:
        if rows and not 0 <= rows[0] <= rows[-1] < len(records):
            raise EftclipError(f"rows: positions must lie in [0, {len(records)}) for {data}, got {rows[0]}..{rows[-1]}")
        allowed = set(rows)
        candidates = [i for i in candidates if i in allowed]
    n = _count(num, rate, len(records))
    if n > len(candidates):
        raise EftclipError(
            f"{'label-consistent ' if label_consistent else ''}poisoning asked for {n} rows but only "
            f"{len(candidates)} rows of {data} qualify"
            + (f" (captions that {'mention' if label_consistent else 'do not mention'} {target!r})"
               if label_consistent or avoid_target else "")
            + (f" (among the {len(rows)} given rows)" if rows is not None else "")
        )
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(candidates), size=n, replace=False))
    chosen = [candidates[int(j)] for j in picked]
    template_idx = rng.integers(0, len(templates), size=n)

    out_names = {}
    for i in chosen:
        rec = records[i]
        path = images_dir / f"{rec.row:07d}.png"
        if path in out_names.values():  # rows from several files may share a number
            path = images_dir / f"{rec.row:07d}_{i}.png"
        if str(path.resolve()) in source_images:
            raise EftclipError(f"--out {out}: writing {path} would overwrite a source image")
        out_names[i] = path

    if force and previous is not None:
        _drop_replaced_images(previous, out, images_dir, keep={p.resolve() for p in out_names.values()},
                              protected={Path(p) for p in source_images})

    poisoned_entries = []
    captions: dict[int, str] = {}
    for k, i in enumerate(tqdm(chosen, desc=f"poison ({trigger.name})", disable=not progress)):
        rec = records[i]
        with open_image(rec) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        result = trigger.apply(arr, np.random.default_rng([int(seed), _TRIGGER_STREAM, int(rec.row), i]))
        with atomic_path(out_names[i]) as tmp:
            Image.fromarray(result.image).save(tmp, format="PNG")
        caption = rec.caption if label_consistent else templates[int(template_idx[k])].format(target)
        captions[i] = caption
        box = result.box_xyxy()
        poisoned_entries.append(
            {
                "row": rec.row,
                "key": rec.key,
                "source_image": rec.image,
                "image": out_names[i].relative_to(out).as_posix(),
                "caption": caption,
                "orig_caption": rec.caption,
                "trigger_box_xyxy": None if box is None else list(box),
                "trigger_pixels": int(result.mask.sum()),
            }
        )

    rows = []
    extra_cols: list[str] = []
    for rec in records:
        for col in rec.extra:
            if col not in COLUMNS and col not in extra_cols:
                extra_cols.append(col)
    for i, rec in enumerate(records):
        is_new = i in captions
        was_poisoned = bool(rec.is_poisoned)
        row = {
            "image": str(out_names[i].resolve()) if is_new else rec.image,
            "caption": captions[i] if is_new else rec.caption,
            "is_poisoned": 1 if (is_new or was_poisoned) else 0,
            "orig_caption": rec.caption if is_new else rec.extra.get("orig_caption", rec.caption),
            "trigger": trigger.name if is_new else (rec.extra.get("trigger", "") if was_poisoned else ""),
        }
        for col in extra_cols:
            row[col] = rec.extra.get(col, "")
        rows.append(row)
    write_captions_csv(csv_path, rows, COLUMNS + extra_cols)

    manifest = {
        "eftclip_version": __version__,
        "request": request,
        "seed": int(seed),
        "attack": trigger.name,
        "attack_params": trigger.params(),
        "target": target,
        "templates": templates,
        "label_consistent": bool(label_consistent),
        "data_csv": csv_path.name,
        "counts": {
            "rows": len(records),
            "poisoned": len(chosen),
            "clean": len(records) - len(chosen),
            "candidates": len(candidates),
            "previously_poisoned": sum(1 for r in records if r.is_poisoned),
        },
        "poisoned": poisoned_entries,
    }
    write_json(manifest_path, manifest)
    return manifest
