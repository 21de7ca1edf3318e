"""What is really in each image of a detection set built from the world (for scoring only).

The world's ``*_meta.jsonl`` files list each scene's objects.  A detection set
is a caption CSV whose clean rows point at the world's scene images and whose
triggered rows point at new files written by
:func:`eftclip.attacks.poison.poison_dataset`; that poisoning's
``manifest.json`` (beside the CSV) maps each new file back to its source
scene.  The result feeds :func:`eftclip.detection.profile_truth.profile_vs_truth`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from eftclip.errors import EftclipError


def _canonical(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def scene_objects(meta_path: str | os.PathLike) -> dict[str, list[str]]:
    """``{canonical image path: [object categories]}`` from one ``*_meta.jsonl`` (paths relative to its folder)."""
    from eftclip.io import read_jsonl

    meta_path = Path(meta_path)
    if not meta_path.exists():
        raise EftclipError(f"{meta_path}: world scene list not found")
    out = {}
    for line_no, rec in enumerate(read_jsonl(meta_path), start=1):
        if "image" not in rec or "objects" not in rec:
            raise EftclipError(f"{meta_path}: line {line_no} lacks 'image' or 'objects'")
        out[_canonical(meta_path.parent / rec["image"])] = [o["category"] for o in rec["objects"]]
    return out


def _poisoned_sources(csv_path: Path) -> dict[str, str]:
    """``{canonical triggered image: canonical source image}`` from the poisoning's manifest, if any."""
    from eftclip.io import read_json

    manifest = csv_path.parent / "manifest.json"
    if not manifest.exists():
        return {}
    entries = read_json(manifest).get("poisoned", [])
    return {_canonical(csv_path.parent / e["image"]): _canonical(e["source_image"]) for e in entries}


def detection_truth(
    detection_csv: str | os.PathLike, meta_paths: Iterable[str | os.PathLike]
) -> tuple[dict[str, list[str]], dict[str, bool | None]]:
    """``(objects, triggered)`` of every row of a world detection set, keyed as ``images.jsonl`` keys images.

    ``meta_paths``: the world's ``*_meta.jsonl`` files the set was drawn from
    (usually ``world_paths(root)["detect_meta"]``).  A row whose scene is in
    none of them is an error naming it.
    """
    from eftclip.data.captions import read_captions

    csv_path = Path(detection_csv)
    scenes: dict[str, list[str]] = {}
    for meta in meta_paths:
        scenes.update(scene_objects(meta))
    sources = _poisoned_sources(csv_path)
    objects: dict[str, list[str]] = {}
    triggered: dict[str, bool | None] = {}
    for rec in read_captions(csv_path, check_images=False).records:
        path = _canonical(rec.image)
        path = sources.get(path, path)
        if path not in scenes:
            raise EftclipError(f"{csv_path}: row {rec.row}: image {rec.image} is not a scene of the given world files")
        objects[rec.image] = scenes[path]
        triggered[rec.image] = rec.is_poisoned
    return objects, triggered
