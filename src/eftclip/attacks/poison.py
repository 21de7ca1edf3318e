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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eftclip.attacks.base import Trigger, TriggerResult, create_trigger
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


@dataclass(frozen=True)
class _Ask:
    """The checked arguments of one poisoning that the steps after the checks need."""

    data: Path  # the source caption file
    trigger: Trigger
    target: str  # stripped, never empty
    templates: list[str]
    seed: int
    label_consistent: bool
    avoid_target: bool
    rows: list[int] | None  # allowed record positions, sorted and unique; None = any


@dataclass(frozen=True)
class _Outputs:
    """The files a poisoning writes under its output folder ``root``."""

    root: Path
    csv: Path  # data.csv
    manifest: Path  # manifest.json, written last
    images: Path  # images/, the triggered PNGs

    @classmethod
    def under(cls, root: Path, *, source: Path) -> "_Outputs":
        """The outputs of a poisoning of ``source`` written to ``root``; refuses to overwrite ``source``."""
        dest = cls(root, root / "data.csv", root / "manifest.json", root / "images")
        if dest.csv.resolve() == source.resolve():
            raise EftclipError(f"--out {root}: writing {dest.csv} would overwrite the source {source}")
        return dest


@dataclass(frozen=True)
class _Draw:
    """Which rows are poisoned: ``chosen`` out of ``candidates`` (record positions)."""

    candidates: list[int]  # record positions that may be poisoned, ascending
    chosen: list[int]  # the positions drawn, ascending
    template_idx: np.ndarray  # (len(chosen),) int64: the caption template drawn for each chosen row


def _as_trigger(trigger: Trigger | str) -> Trigger:
    """The :class:`Trigger` itself, or the one registered under that name with its default parameters."""
    if isinstance(trigger, str):
        trigger = create_trigger(trigger)
    if not isinstance(trigger, Trigger):
        raise EftclipError(f"trigger must be a Trigger or an attack name, got {type(trigger).__name__}")
    return trigger


def _check_target(target: str) -> str:
    """The target label with surrounding whitespace stripped; never empty."""
    if not isinstance(target, str) or not target.strip():
        raise EftclipError("the target label is empty")
    return target.strip()


def _check_ask(data, trigger, target, templates, seed, label_consistent, avoid_target, rows) -> _Ask:
    """The arguments of :func:`poison_dataset` checked and normalised, in the order it checks them."""
    trigger, target, templates = _as_trigger(trigger), _check_target(target), _check_templates(templates)
    if avoid_target and label_consistent:
        raise EftclipError("avoid_target and label_consistent exclude each other")
    if rows is not None:
        rows = sorted({int(r) for r in rows})
    return _Ask(Path(data), trigger, target, templates, seed, label_consistent, avoid_target, rows)


def _request(ask: _Ask, *, num: int | None, rate: float | None, image_key: str | None, caption_key: str | None,
             sep: str | None) -> dict[str, Any]:
    """The manifest's ``request``: everything asked, so that a rerun can tell the same request from another."""
    rows = ask.rows
    return {
        "source": str(ask.data.resolve()),
        "attack": ask.trigger.name,
        "attack_params": ask.trigger.params(),
        "target": ask.target,
        "templates": ask.templates,
        "avoid_target": bool(ask.avoid_target),
        "rows": None if rows is None else {"count": len(rows), "sha256": _digest(rows)},
        "seed": int(ask.seed),
        "num": None if num is None else int(num),
        "rate": None if rate is None else float(rate),
        "label_consistent": bool(ask.label_consistent),
        "image_key": image_key,
        "caption_key": caption_key,
        "sep": sep,
    }


def _previous_manifest(dest: _Outputs, request: dict[str, Any], force: bool) -> dict | None:
    """The manifest already in ``dest`` (None if none); refuses another poisoning's folder unless ``force``."""
    from eftclip.io import read_json

    previous = read_json(dest.manifest) if dest.manifest.exists() else None
    if not force:
        if previous is not None and previous.get("request") != request:
            raise EftclipError(
                f"{dest.root} already holds a different poisoning (see {dest.manifest}); "
                "choose another --out or pass --force to replace it"
            )
        if previous is None and dest.csv.exists():
            raise EftclipError(
                f"{dest.root} already has a data.csv without a manifest.json; "
                "choose another --out or pass --force to replace it"
            )
    return previous


def _read_records(data: Path, image_key: str | None, caption_key: str | None, sep: str | None) -> list:
    """The :class:`~eftclip.data.captions.CaptionRecord` list of ``data``; never empty."""
    from eftclip.data.captions import read_captions

    records = read_captions(data, image_key=image_key, caption_key=caption_key, sep=sep).records
    if not records:
        raise EftclipError(f"{data}: no rows to poison")
    return records


def _source_image_files(records) -> set[str]:
    """Resolved paths (strings) of the files that hold the records' images."""
    # tar members ("shard.tar::member") are written back as references; only files can collide
    return {str(Path(rec.image.split("::", 1)[0]).resolve()) for rec in records}


def _candidates(records, ask: _Ask) -> list[int]:
    """Record positions (ascending) that may be poisoned: by the caption rule, then within ``ask.rows``."""
    if ask.label_consistent:
        pattern = _word_pattern(ask.target)
        candidates = [i for i, rec in enumerate(records) if pattern.search(rec.caption)]
    elif ask.avoid_target:
        pattern = _word_pattern(ask.target)
        candidates = [i for i, rec in enumerate(records) if not pattern.search(rec.caption)]
    else:
        candidates = list(range(len(records)))
    rows = ask.rows
    if rows is not None:
        if rows and not 0 <= rows[0] <= rows[-1] < len(records):
            raise EftclipError(
                f"rows: positions must lie in [0, {len(records)}) for {ask.data}, got {rows[0]}..{rows[-1]}")
        allowed = set(rows)
        candidates = [i for i in candidates if i in allowed]
    return candidates


def _check_enough(n: int, candidates: list[int], ask: _Ask) -> None:
    """Raise unless ``n`` rows can be drawn from ``candidates``, naming what narrowed them."""
    if n > len(candidates):
        lc = ask.label_consistent
        raise EftclipError(
            f"{'label-consistent ' if lc else ''}poisoning asked for {n} rows but only "
            f"{len(candidates)} rows of {ask.data} qualify"
            + (f" (captions that {'mention' if lc else 'do not mention'} {ask.target!r})"
               if lc or ask.avoid_target else "")
            + (f" (among the {len(ask.rows)} given rows)" if ask.rows is not None else "")
        )


def _draw(candidates: list[int], n: int, ask: _Ask) -> _Draw:
    """``n`` of the ``candidates``, then a template per drawn row, from ``np.random.default_rng(seed)``."""
    _check_enough(n, candidates, ask)
    rng = np.random.default_rng(ask.seed)
    picked = np.sort(rng.choice(len(candidates), size=n, replace=False))
    chosen = [candidates[int(j)] for j in picked]
    template_idx = rng.integers(0, len(ask.templates), size=n)
    return _Draw(candidates, chosen, template_idx)


def _output_paths(records, chosen: list[int], dest: _Outputs, source_images: set[str]) -> dict[int, Path]:
    """Record position -> the PNG its triggered image goes to (``images/<row:07d>.png``), never a source image."""
    out_names = {}
    for i in chosen:
        rec = records[i]
        path = dest.images / f"{rec.row:07d}.png"
        if path in out_names.values():  # rows from several files may share a number
            path = dest.images / f"{rec.row:07d}_{i}.png"
        if str(path.resolve()) in source_images:
            raise EftclipError(f"--out {dest.root}: writing {path} would overwrite a source image")
        out_names[i] = path
    return out_names


def _write_triggered(rec, i: int, path: Path, ask: _Ask) -> TriggerResult:
    """Trigger record ``rec`` (position ``i``), write it to ``path`` as PNG; return the trigger's result."""
    from PIL import Image

    from eftclip.data.captions import open_image
    from eftclip.io import atomic_path

    with open_image(rec) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    result = ask.trigger.apply(arr, np.random.default_rng([int(ask.seed), _TRIGGER_STREAM, int(rec.row), i]))
    with atomic_path(path) as tmp:
        Image.fromarray(result.image).save(tmp, format="PNG")
    return result


def _poison_images(records, draw: _Draw, out_names: dict[int, Path], ask: _Ask, dest: _Outputs,
                   progress: bool) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """Trigger and write the chosen images; return their captions by record position and the manifest entries."""
    from tqdm import tqdm

    entries = []
    captions: dict[int, str] = {}
    for k, i in enumerate(tqdm(draw.chosen, desc=f"poison ({ask.trigger.name})", disable=not progress)):
        rec = records[i]
        result = _write_triggered(rec, i, out_names[i], ask)
        caption = rec.caption if ask.label_consistent else ask.templates[int(draw.template_idx[k])].format(ask.target)
        captions[i] = caption
        box = result.box_xyxy()
        entries.append(
            {
                "row": rec.row,
                "key": rec.key,
                "source_image": rec.image,
                "image": out_names[i].relative_to(dest.root).as_posix(),
                "caption": caption,
                "orig_caption": rec.caption,
                "trigger_box_xyxy": None if box is None else list(box),
                "trigger_pixels": int(result.mask.sum()),
            }
        )
    return captions, entries


def _csv_table(records, captions: dict[int, str], out_names: dict[int, Path],
               trigger_name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """``(rows, columns)`` of ``data.csv``: :data:`COLUMNS`, then the source's other columns as first seen."""
    extra_cols: list[str] = []
    for rec in records:
        for col in rec.extra:
            if col not in COLUMNS and col not in extra_cols:
                extra_cols.append(col)
    rows = []
    for i, rec in enumerate(records):
        is_new = i in captions
        was_poisoned = bool(rec.is_poisoned)
        row = {
            "image": str(out_names[i].resolve()) if is_new else rec.image,
            "caption": captions[i] if is_new else rec.caption,
            "is_poisoned": 1 if (is_new or was_poisoned) else 0,
            "orig_caption": rec.caption if is_new else rec.extra.get("orig_caption", rec.caption),
            "trigger": trigger_name if is_new else (rec.extra.get("trigger", "") if was_poisoned else ""),
        }
        for col in extra_cols:
            row[col] = rec.extra.get(col, "")
        rows.append(row)
    return rows, COLUMNS + extra_cols


def _manifest(request: dict[str, Any], ask: _Ask, records, draw: _Draw, entries: list[dict[str, Any]],
              dest: _Outputs) -> dict[str, Any]:
    """The content of ``manifest.json``: version, request, attack, counts and the poisoned rows."""
    from eftclip import __version__

    return {
        "eftclip_version": __version__,
        "request": request,
        "seed": int(ask.seed),
        "attack": ask.trigger.name,
        "attack_params": ask.trigger.params(),
        "target": ask.target,
        "templates": ask.templates,
        "label_consistent": bool(ask.label_consistent),
        "data_csv": dest.csv.name,
        "counts": {
            "rows": len(records),
            "poisoned": len(draw.chosen),
            "clean": len(records) - len(draw.chosen),
            "candidates": len(draw.candidates),
            "previously_poisoned": sum(1 for r in records if r.is_poisoned),
        },
        "poisoned": entries,
    }


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
    from eftclip.data.captions import write_captions_csv
    from eftclip.io import write_json

    ask = _check_ask(data, trigger, target, templates, seed, label_consistent, avoid_target, rows)
    dest = _Outputs.under(Path(out), source=ask.data)
    request = _request(ask, num=num, rate=rate, image_key=image_key, caption_key=caption_key, sep=sep)
    previous = _previous_manifest(dest, request, force)

    records = _read_records(ask.data, image_key, caption_key, sep)
    source_images = _source_image_files(records)
    candidates = _candidates(records, ask)
    n = _count(num, rate, len(records))
    draw = _draw(candidates, n, ask)
    out_names = _output_paths(records, draw.chosen, dest, source_images)
    if force and previous is not None:
        _drop_replaced_images(previous, dest.root, dest.images, keep={p.resolve() for p in out_names.values()},
                              protected={Path(p) for p in source_images})

    captions, entries = _poison_images(records, draw, out_names, ask, dest, progress)
    write_captions_csv(dest.csv, *_csv_table(records, captions, out_names, ask.trigger.name))
    manifest = _manifest(request, ask, records, draw, entries, dest)
    write_json(dest.manifest, manifest)
    return manifest
