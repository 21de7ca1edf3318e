"""Caption CSVs for disjoint splits of a labelled ImageFolder (CIFAR-10 and alike).

A classification folder ``root/train/<class>/*.jpg`` has labels but no
captions.  :func:`make_splits` draws disjoint, class-stratified splits of its
images with a seeded ``numpy.random.Generator`` and writes one caption CSV per
split (CleanCLIP layout: ``image, caption, label``; image paths point at the
original files, relative to the CSV, nothing is copied).  Each caption is one
of the templates (e.g. open_clip-style CIFAR-10 prompts) filled with the
image's class name, the template drawn per image.

The splits the study uses:

* ``train``: pre-training pairs (poisoned for the attacked models);
* ``pool``: the clean fine-tuning pool (CleanCLIP's random subsets, EftCLIP's
  curated set are drawn from it);
* ``reference``: the retained clean split D_e on which the oracle's labeller is
  trained (it never sees ``train``, so never a poisoned pair);
* ``detect``: held-out clean images from which the mixed detection set is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from eftclip.errors import EftclipError

SPLIT_ORDER = ("reference", "detect", "pool", "train")  # the fixed-size splits are drawn first; train takes the rest


def _per_class(n: int, classes: int) -> list[int]:
    """``n`` spread over ``classes`` as evenly as possible (the first classes get the remainder)."""
    base, extra = divmod(n, classes)
    return [base + (1 if c < extra else 0) for c in range(classes)]


def _check_request(sizes: Mapping[str, int | None], templates: Sequence[str]) -> list[str]:
    """The names of the splits that take all that remain (at most one); raises on bad sizes or templates."""
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise EftclipError("caption templates must each hold exactly one '{}'")
    rest = [name for name, n in sizes.items() if n is None]
    if len(rest) > 1:
        raise EftclipError(f"splits {', '.join(rest)}: only one split may take 'all that remain' (null)")
    for name, n in sizes.items():
        if n is not None and (not isinstance(n, int) or n < 0):
            raise EftclipError(f"split '{name}': size must be a whole number >= 0 or null, got {n!r}")
    return rest


def _draw_order(sizes: Mapping[str, int | None], rest: list[str]) -> list[str]:
    """Split names in drawing order: :data:`SPLIT_ORDER`, then the others as given, the one taking the rest last."""
    order = [s for s in SPLIT_ORDER if s in sizes] + [s for s in sizes if s not in SPLIT_ORDER]
    return [s for s in order if sizes[s] is not None] + rest


def _draw_splits(folder, sizes: Mapping[str, int | None], rest: list[str],
                 rng: np.random.Generator) -> dict[str, list[tuple[str, int]]]:
    """Split name -> its ``(image path, class index)`` pairs, disjoint and stratified, each list shuffled.

    Draws from ``rng``: one permutation per class, then one per split in drawing order.
    """
    n_cls = len(folder.classes)
    by_class: list[list[str]] = [[] for _ in range(n_cls)]
    for path, c in folder.samples:
        by_class[c].append(path)
    shuffled = [[cls[i] for i in rng.permutation(len(cls))] for cls in by_class]
    taken = [0] * n_cls
    chosen: dict[str, list[tuple[str, int]]] = {}
    for name in _draw_order(sizes, rest):
        n = sizes[name]
        if n is None:
            want = [len(shuffled[c]) - taken[c] for c in range(n_cls)]
        else:
            want = _per_class(n, n_cls)
        picks = []
        for c in range(n_cls):
            left = len(shuffled[c]) - taken[c]
            if want[c] > left:
                raise EftclipError(
                    f"{folder.root}: split '{name}' needs {want[c]} images of class '{folder.classes[c]}' "
                    f"but only {left} remain after the earlier splits; lower the split sizes")
            picks.extend((p, c) for p in shuffled[c][taken[c]: taken[c] + want[c]])
            taken[c] += want[c]
        chosen[name] = [picks[i] for i in rng.permutation(len(picks))]
    return chosen


def _write_split(csv_path: Path, picks: list[tuple[str, int]], folder, templates: Sequence[str],
                 rng: np.random.Generator) -> dict:
    """Write one split's caption CSV (columns ``image, caption, label``); return its ``{"csv", "n", "per_class"}``.

    Draws one template index per image from ``rng``.
    """
    from eftclip.data.captions import write_captions_csv

    which = rng.integers(0, len(templates), size=len(picks))
    rows = [{"image": path, "caption": templates[t].format(folder.classnames[c]), "label": folder.classnames[c]}
            for (path, c), t in zip(picks, which)]
    write_captions_csv(csv_path, rows, ["image", "caption", "label"])
    counts = np.bincount([c for _, c in picks], minlength=len(folder.classes)).tolist()
    return {"csv": str(csv_path), "n": len(picks), "per_class": dict(zip(folder.classnames, counts))}


def make_splits(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sizes: Mapping[str, int | None],
    templates: Sequence[str],
    classnames: str | Sequence[str] | None = None,
    seed: int = 0,
) -> dict:
    """Write ``out/<split>.csv`` for each split in ``sizes``; return the manifest.

    Args:
        root: an ImageFolder (``root/<class>/<image>``), e.g. ``cifar10/train``.
        out: folder for the CSVs, ``classnames.json`` (display names in class
            order) and ``splits.json`` (this manifest).
        sizes: split name -> number of images; exactly one split may be
            ``None`` ("all that remain").  Every split is stratified by class
            (sizes spread evenly over the classes).
        templates: caption format strings with one ``{}``.
        classnames: display names (a spec for
            :func:`eftclip.data.zeroshot.load_classnames`, or a list); None =
            folder names.
        seed: seeds the split draw and the template choice.

    Returns:
        ``{"root", "seed", "classes", "classnames", "templates", "splits": {name:
        {"csv", "n", "per_class"}}, "classnames_file"}``.
    """
    from eftclip.data.zeroshot import ImageFolderSet
    from eftclip.io import write_json

    rest = _check_request(sizes, templates)
    folder = ImageFolderSet(root, classnames=classnames)
    rng = np.random.default_rng([seed, 4242])
    chosen = _draw_splits(folder, sizes, rest, rng)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # written in the order given, each drawing its templates from the same stream in turn
    splits = {name: _write_split(out / f"{name}.csv", chosen[name], folder, templates, rng) for name in sizes}
    names_file = out / "classnames.json"
    write_json(names_file, list(folder.classnames))
    manifest = {
        "root": str(folder.root), "seed": seed, "classes": list(folder.classes),
        "classnames": list(folder.classnames), "templates": list(templates),
        "splits": splits, "classnames_file": str(names_file),
    }
    write_json(out / "splits.json", manifest)
    return manifest
