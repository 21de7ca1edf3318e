"""Webdataset tar shards: finding them and grouping their members into samples.

A webdataset shard is a plain tar whose members are grouped into samples by
key: ``000123.jpg`` and ``000123.txt`` form the sample ``000123`` (the key is
the member path up to the first dot of its file name, the rest is the
extension).  Shards are named by a single ``.tar`` path, a folder of ``*.tar``
files, a glob (``shards/*.tar``) or a brace pattern (``shards/{000..003}.tar``,
``{a,b}.tar``).  Everything is read locally with :mod:`tarfile`; nothing is
downloaded.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from eftclip.errors import EftclipError

_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)\}")
_GLOB_CHARS = set("*?[")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..003}`` ranges (zero padding kept) and ``{a,b}`` lists, left to right.

    ``"s/{00..02}.tar"`` -> ``["s/00.tar", "s/01.tar", "s/02.tar"]``.  A pattern
    without braces is returned as the only element.  Unbalanced braces raise
    :class:`EftclipError`.
    """
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise EftclipError(f"shard pattern '{pattern}': unbalanced '}}'")
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        if pattern[end] == "{":
            depth += 1
        elif pattern[end] == "}":
            depth -= 1
            if depth == 0:
                break
    else:
        raise EftclipError(f"shard pattern '{pattern}': unbalanced '{{'")
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    match = _RANGE.fullmatch("{" + body + "}")
    if match:
        lo_text, hi_text = match.groups()
        lo, hi = int(lo_text), int(hi_text)
        width = len(lo_text) if lo_text.startswith("0") and len(lo_text) > 1 else 0
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    else:
        options = _split_top_level(body)
    out = []
    for option in options:
        for rest in expand_braces(head + option + tail):
            out.append(rest)
    return out


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current.append(ch)
    parts.append("".join(current))
    return parts


def is_shard_spec(path: str | os.PathLike) -> bool:
    """True when ``path`` names tar shards: a ``.tar``, a folder, a glob or a brace pattern."""
    text = os.fspath(path)
    if os.path.isdir(text):
        return True
    if os.path.isfile(text):
        # an existing file is a shard only by its extension, so that a CSV named
        # "runs[1].csv" is not mistaken for a glob
        return text.lower().endswith(".tar")
    if "{" in text or any(ch in _GLOB_CHARS for ch in text):
        return True
    return text.lower().endswith(".tar")


def resolve_shards(spec: str | os.PathLike) -> list[Path]:
    """List the shard files a spec names, as absolute paths.

    A folder gives its ``*.tar`` files sorted by name; a glob gives its matches
    sorted; a brace pattern keeps its expansion order (each part may itself be
    a glob).  A spec that matches nothing, or a named shard that is missing,
    raises :class:`EftclipError`.
    """
    text = os.path.expanduser(os.fspath(spec))
    if os.path.isdir(text):
        shards = sorted(p for p in Path(text).iterdir() if p.is_file() and p.suffix.lower() == ".tar")
        if not shards:
            raise EftclipError(f"{text}: folder holds no .tar shards")
        return [Path(os.path.abspath(p)) for p in shards]
    shards: list[Path] = []
    for part in expand_braces(text):
        if any(ch in _GLOB_CHARS for ch in part):
            matches = sorted(glob.glob(part))
            if not matches:
                raise EftclipError(f"shard pattern '{part}' matches no files")
            shards.extend(Path(m) for m in matches)
        else:
            if not os.path.isfile(part):
                raise EftclipError(f"{part}: tar shard not found")
            shards.append(Path(part))
    for shard in shards:
        if shard.suffix.lower() != ".tar":
            raise EftclipError(f"{shard}: not a .tar shard (webdataset shards are uncompressed .tar files)")
    return [Path(os.path.abspath(p)) for p in shards]


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member path into ``(key, extension)``: ``"d/0001.seg.png"`` -> ``("d/0001", "seg.png")``."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, (ext.lower() if dot else "")


@dataclass
class TarSample:
    """The members of one sample of a shard, as found by :func:`scan_tar`.

    ``row`` is the 1-based position (among all the tar's members) of the
    sample's first member, so a message can point at it.  ``files`` maps the
    extension (lower case, e.g. ``"jpg"``, ``"txt"``) to the member name.
    ``data`` holds the bytes of the members that were read.
    """

    key: str  # member path up to the first dot of the file name
    row: int  # 1-based member index of the sample's first member
    files: dict[str, str] = field(default_factory=dict)  # extension -> member name
    rows: dict[str, int] = field(default_factory=dict)  # extension -> 1-based member index
    data: dict[str, bytes] = field(default_factory=dict)  # extension -> member bytes (if read)
    problem: str | None = None  # a defect of the grouping itself (a repeated member)


def scan_tar(path: Path, read_exts: set[str], image_exts: tuple[str, ...]) -> list[TarSample]:
    """Group a shard's regular members into samples, in order of first appearance.

    Members whose extension is in ``read_exts`` have their bytes read (captions
    and other small text always; images only when they are to be checked);
    any image extension in ``image_exts`` is read only if it is in
    ``read_exts``.  Non-file members (folders, links) are ignored.
    """
    samples: dict[str, TarSample] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for index, info in enumerate(tar, start=1):
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if not ext:
                    continue
                sample = samples.get(key)
                if sample is None:
                    sample = samples[key] = TarSample(key=key, row=index)
                if ext in sample.files:
                    sample.problem = sample.problem or f"member {index} '{info.name}' repeats '{sample.files[ext]}'"
                    continue
                sample.files[ext] = info.name
                sample.rows[ext] = index
                if ext in read_exts or (ext not in image_exts and info.size <= 1 << 20):
                    fh = tar.extractfile(info)
                    assert fh is not None
                    sample.data[ext] = fh.read()
    except FileNotFoundError:
        raise EftclipError(f"{path}: tar shard not found") from None
    except tarfile.TarError as exc:
        raise EftclipError(f"{path}: not a readable tar file ({exc})") from None
    return list(samples.values())
