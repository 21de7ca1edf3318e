"""Zero-shot classification data: labelled image folders, class names and prompt templates.

Class names and templates are data, named by a short spec:

- class names: ``"imagenet1k"`` (open_clip's ``IMAGENET_CLASSNAMES``),
  ``"cifar10"`` (the ten CIFAR-10 classes; open_clip 3.3.0 ships no CIFAR-10
  list, so ours lives in ``classnames/cifar10.json``), or a JSON file holding a
  list of names or a mapping folder name -> display name;
- templates: ``"openai"`` (open_clip's ``OPENAI_IMAGENET_TEMPLATES``, the 80
  prompts of the CLIP paper), ``"simple"`` (open_clip's
  ``SIMPLE_IMAGENET_TEMPLATES``, 7 prompts), ``"cifar10"`` (our 10 prompts for
  low-resolution images in ``templates/cifar10.json``; open_clip 3.3.0 has no
  CIFAR-10 set), or a JSON file holding a list of format strings with exactly
  one ``{}`` each.

open_clip keeps its templates as lambdas; calling each with ``"{}"`` turns it
into the format string used here, so the lists are read from the installed
open_clip rather than copied.
"""

from __future__ import annotations

import json
import os
import string
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from eftclip.data.images import IMAGE_EXTENSIONS, open_image
from eftclip.errors import EftclipError

__all__ = [
    "CLASSNAME_SETS",
    "TEMPLATE_SETS",
    "ImageFolderSet",
    "load_classnames",
    "load_templates",
]


def _packaged_json(folder: str, name: str) -> Any:
    return json.loads(resources.files("eftclip.data").joinpath(folder, name).read_text(encoding="utf-8"))


def _imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _open_clip_templates(attribute: str) -> Callable[[], list[str]]:
    def load() -> list[str]:
        import open_clip.zero_shot_metadata as metadata

        return [template("{}") for template in getattr(metadata, attribute)]

    return load


#: built-in class-name sets: spec name -> loader returning the names in class-index order
CLASSNAME_SETS: dict[str, Callable[[], list[str]]] = {
    "cifar10": lambda: list(_packaged_json("classnames", "cifar10.json")),
    "imagenet1k": _imagenet_classnames,
}

#: built-in template sets: spec name -> loader returning format strings with one "{}"
TEMPLATE_SETS: dict[str, Callable[[], list[str]]] = {
    "openai": _open_clip_templates("OPENAI_IMAGENET_TEMPLATES"),
    "simple": _open_clip_templates("SIMPLE_IMAGENET_TEMPLATES"),
    "cifar10": lambda: list(_packaged_json("templates", "cifar10.json")),
}


def _is_file_spec(spec: Any, known: Mapping[str, Any]) -> bool:
    if isinstance(spec, os.PathLike):
        return True
    return spec not in known and (spec.lower().endswith(".json") or os.path.exists(spec))


def _read_classname_spec(spec: str | os.PathLike) -> list[str] | dict[str, str]:
    """A built-in set (list) or a JSON file (list, or dict folder -> display name)."""
    if not isinstance(spec, (str, os.PathLike)):
        raise EftclipError(f"class names must be a set name or a JSON file, not {type(spec).__name__}")
    if not _is_file_spec(spec, CLASSNAME_SETS):
        if spec not in CLASSNAME_SETS:
            raise EftclipError(
                f"unknown class-name set '{spec}'; known: {', '.join(CLASSNAME_SETS)}, or a path to a JSON file"
            )
        return CLASSNAME_SETS[spec]()
    path = Path(spec)
    data = _read_json(path, "class names")
    if isinstance(data, list):
        _check_names(data, str(path))
        return list(data)
    if isinstance(data, dict):
        _check_names(list(data.values()), str(path))
        return dict(data)
    raise EftclipError(f"{path}: class names must be a JSON list or an object folder -> name, not {type(data).__name__}")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EftclipError(f"{path}: {what} file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EftclipError(f"{path}: {what} file is not valid JSON ({exc})") from None


def _check_names(names: Sequence[Any], where: str) -> None:
    if not names:
        raise EftclipError(f"{where}: no class names")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise EftclipError(f"{where}: class name {i + 1} ({name!r}) is not a non-empty string")
    # duplicates are allowed: open_clip's own ImageNet list names two pairs of
    # classes alike ("sunglasses", "missile"), and a classifier copes with that


def load_classnames(spec: str | os.PathLike) -> list[str]:
    """Class display names for ``spec``, in class-index order.

    ``spec`` is ``"cifar10"``, ``"imagenet1k"`` or a JSON file path.  A JSON
    mapping folder -> name gives its names in sorted folder order, the order
    :class:`ImageFolderSet` numbers classes in.  Unknown names and malformed
    files raise :class:`EftclipError`.
    """
    names = _read_classname_spec(spec)
    if isinstance(names, dict):
        return [names[folder] for folder in sorted(names)]
    return names


def load_templates(spec: str | os.PathLike) -> list[str]:
    """Prompt templates for ``spec``: format strings each with exactly one ``{}``.

    ``spec`` is ``"openai"``, ``"simple"``, ``"cifar10"`` or a JSON file
    holding a list of strings.  Every template is validated; a bad one raises
    :class:`EftclipError` naming the file and the template's position.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise EftclipError(f"templates must be a set name or a JSON file, not {type(spec).__name__}")
    if _is_file_spec(spec, TEMPLATE_SETS):
        where = str(spec)
        templates = _read_json(Path(spec), "templates")
        if not isinstance(templates, list):
            raise EftclipError(f"{where}: templates must be a JSON list of strings, not {type(templates).__name__}")
    elif spec in TEMPLATE_SETS:
        where = f"template set '{spec}'"
        templates = TEMPLATE_SETS[spec]()
    else:
        raise EftclipError(f"unknown template set '{spec}'; known: {', '.join(TEMPLATE_SETS)}, or a path to a JSON file")
    if not templates:
        raise EftclipError(f"{where}: no templates")
    for i, template in enumerate(templates, start=1):
        problem = _template_problem(template)
        if problem:
            raise EftclipError(f"{where}: template {i} {template!r} {problem}")
    return list(templates)


def _template_problem(template: Any) -> str | None:
    if not isinstance(template, str):
        return "is not a string"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"is not a valid format string ({exc})"
    if len(fields) != 1 or fields[0] != ("", "", None):
        return f"must hold exactly one '{{}}' and no other braces (found {len(fields)} replacement field(s))"
    return None


class ImageFolderSet:
    """A labelled image folder ``root/<class>/*.{jpg,jpeg,png}`` for zero-shot evaluation.

    Classes are the sub-folders sorted by name (hidden ones ignored) and
    numbered in that order; images in each class are sorted by file name, so
    the sample order is deterministic.  ``classnames`` gives the display names
    used in prompts: None (folder names with ``_`` -> space), a list in class
    order (a list of exactly the folder names, in any order, is matched by
    name), a mapping folder -> name, or a spec for :func:`load_classnames`
    (a JSON mapping is matched by folder name).  ``max_per_class`` keeps only
    the first N images of each class (a quick, still deterministic subset).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classnames: str | os.PathLike | Sequence[str] | Mapping[str, str] | None = None,
        *,
        max_per_class: int | None = None,
    ):
        self.root = Path(os.path.abspath(root))
        if not self.root.is_dir():
            raise EftclipError(f"{self.root}: image folder not found")
        if max_per_class is not None and max_per_class < 1:
            raise EftclipError(f"max_per_class must be at least 1, not {max_per_class}")
        #: class folder names, sorted; the class index is the position here
        self.classes: list[str] = sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            raise EftclipError(f"{self.root}: no class folders (expected root/<class>/<image>.jpg)")
        suffixes = {f".{e}" for e in IMAGE_EXTENSIONS}
        #: (absolute image path, class index), classes in order, files sorted by name
        self.samples: list[tuple[str, int]] = []
        for index, folder in enumerate(self.classes):
            files = sorted(
                p.name
                for p in (self.root / folder).iterdir()
                if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
            )
            if not files:
                raise EftclipError(f"{self.root / folder}: class folder holds no {'/'.join(IMAGE_EXTENSIONS)} images")
            if max_per_class is not None:
                files = files[:max_per_class]
            folder_path = self.root / folder
            self.samples.extend((str(folder_path / name), index) for name in files)
        #: display names, one per class, in class-index order
        self.classnames: list[str] = self._display_names(classnames)

    def _display_names(self, spec) -> list[str]:
        if spec is None:
            return [c.replace("_", " ") for c in self.classes]
        where = f"class names {spec!r}" if isinstance(spec, (str, os.PathLike)) else "class names"
        names = _read_classname_spec(spec) if isinstance(spec, (str, os.PathLike)) else spec
        if isinstance(names, Mapping):
            missing = [c for c in self.classes if c not in names]
            if missing:
                raise EftclipError(
                    f"{where} lack {len(missing)} class folder(s) of {self.root}: {', '.join(missing[:10])}"
                )
            names = [names[c] for c in self.classes]
        else:
            names = list(names)
            # a list holding exactly the folder names (in any order) names each folder by itself:
            # matching by position would silently mislabel every class of a list not sorted by name
            if sorted(names) == self.classes and names != self.classes:
                names = list(self.classes)
        _check_names(names, where)
        if len(names) != len(self.classes):
            raise EftclipError(
                f"{where}: {len(names)} names for {len(self.classes)} class folders in {self.root}"
            )
        return names

    @property
    def targets(self) -> list[int]:
        """Class index of every sample, in sample order."""
        return [index for _, index in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as a loaded RGB ``PIL.Image.Image``."""
        return open_image(self.samples[i][0])

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        """``(PIL RGB image, class index)`` for sample ``i``."""
        path, index = self.samples[i]
        return open_image(path), index
