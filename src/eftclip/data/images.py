"""Opening and checking the images that caption tables point to.

An image reference is a string: either a file path, or ``"<shard.tar>::<member>"``
for a member of a (webdataset) tar shard.  :func:`open_image` returns a fully
loaded ``PIL.Image.Image`` in RGB mode for both.

Tar shards are read with the standard library's :mod:`tarfile` and random
access; open handles are cached per process (a small LRU) so that reading many
members of one shard does not reopen it each time.  The cache is keyed by
process id: a DataLoader worker forked from a parent that already had a shard
open would otherwise share the parent's file offset, and concurrent reads in
the two processes would interleave and return garbage.  After a fork each
process therefore opens its own handles.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

from eftclip.errors import EftclipError

#: separator between a shard path and a member name in an image reference
TAR_SEP = "::"

#: file extensions (lower case, no dot) read as images
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")

# how many shards may stay open per process; webdataset folders can hold
# thousands of shards, and each open TarFile keeps its member index in memory
_MAX_OPEN_TARS = 16


def split_ref(ref: str) -> tuple[str, str | None]:
    """Split an image reference into ``(path, member)``; ``member`` is None for plain files.

    ``"a/b.tar::x/0001.jpg"`` -> ``("a/b.tar", "x/0001.jpg")``; ``"a/b.png"`` -> ``("a/b.png", None)``.
    Only a left part ending in ``.tar`` counts as a shard, so file names that
    happen to contain ``::`` still work.
    """
    shard, sep, member = ref.partition(TAR_SEP)
    if sep and shard.lower().endswith(".tar") and member:
        return shard, member
    return ref, None


def make_ref(shard: str | os.PathLike, member: str) -> str:
    """Build the reference string of ``member`` inside tar ``shard``."""
    return f"{os.fspath(shard)}{TAR_SEP}{member}"


class _OpenTar:
    """One open shard: the TarFile, a name -> TarInfo index, and a lock.

    ``TarFile.getmember`` scans the member list linearly, so we index it once.
    The lock serialises seek+read on the shared file object for threads.
    """

    def __init__(self, path: str):
        try:
            self.tar = tarfile.open(path, "r:")
        except FileNotFoundError:
            raise EftclipError(f"{path}: tar shard not found") from None
        except (tarfile.TarError, OSError) as exc:
            raise EftclipError(f"{path}: cannot read tar shard ({exc})") from None
        self.members = {m.name: m for m in self.tar.getmembers() if m.isfile()}
        self.lock = threading.Lock()

    def read(self, member: str) -> bytes:
        info = self.members.get(member)
        if info is None:
            raise KeyError(member)
        with self.lock:
            fh = self.tar.extractfile(info)
            assert fh is not None  # regular files always have a handle
            return fh.read()

    def close(self) -> None:
        self.tar.close()


class _TarCache:
    """Per-process LRU of open shards (see the module docstring for why per process)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.pid = os.getpid()
        self.open: OrderedDict[str, _OpenTar] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str) -> _OpenTar:
        with self.lock:
            if self.pid != os.getpid():
                # forked: the inherited handles share their file offsets with the
                # parent; forget them (without closing, the parent still uses them)
                self.open = OrderedDict()
                self.pid = os.getpid()
            handle = self.open.get(path)
            if handle is not None:
                self.open.move_to_end(path)
                return handle
            handle = _OpenTar(path)
            self.open[path] = handle
            while len(self.open) > self.capacity:
                _, old = self.open.popitem(last=False)
                old.close()
            return handle

    def clear(self) -> None:
        with self.lock:
            if self.pid == os.getpid():
                for handle in self.open.values():
                    handle.close()
            self.open = OrderedDict()
            self.pid = os.getpid()


_TARS = _TarCache(_MAX_OPEN_TARS)


def close_tar_handles() -> None:
    """Close every shard this process holds open (e.g. before rewriting a shard)."""
    _TARS.clear()


def read_image_bytes(ref: str) -> bytes:
    """Return the raw encoded bytes behind an image reference (file or tar member)."""
    path, member = split_ref(ref)
    if member is None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            raise EftclipError(f"image '{path}' not found") from None
        except OSError as exc:
            raise EftclipError(f"image '{path}' cannot be read ({exc})") from None
    handle = _TARS.get(path)
    try:
        return handle.read(member)
    except KeyError:
        raise EftclipError(f"{path}: no member '{member}' in tar shard") from None
    except (tarfile.TarError, OSError) as exc:
        raise EftclipError(f"{path}: cannot read member '{member}' ({exc})") from None


def open_image(ref: Any) -> Image.Image:
    """Open an image reference as a fully loaded RGB ``PIL.Image.Image``.

    ``ref`` is a path (str or ``os.PathLike``), a ``"<shard.tar>::<member>"``
    string, or any object with an ``image`` attribute holding one of those
    (a :class:`eftclip.data.captions.CaptionRecord`).  Undecodable data raises
    :class:`EftclipError` naming the reference.
    """
    if hasattr(ref, "image") and not isinstance(ref, (str, os.PathLike)):
        ref = ref.image
    ref = os.fspath(ref)
    path, member = split_ref(ref)
    if member is None:
        try:
            with Image.open(path) as im:
                return _to_rgb(im)
        except FileNotFoundError:
            raise EftclipError(f"image '{path}' not found") from None
        except Exception as exc:  # PIL raises many types for corrupt data
            raise EftclipError(f"image '{path}' cannot be decoded ({_describe(exc)})") from None
    data = read_image_bytes(ref)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _to_rgb(im)
    except Exception as exc:
        raise EftclipError(f"image '{ref}' cannot be decoded ({_describe(exc)})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    # plain conversion, as open_clip's own transforms do (alpha is dropped)
    im.load()
    return im.copy() if im.mode == "RGB" else im.convert("RGB")


def check_image(source: str | os.PathLike | bytes) -> str | None:
    """Try to decode an image; return None when it is fine, else a short reason.

    ``source`` is a path or the encoded bytes (read once either way).  PNGs
    also get ``verify()`` (chunk CRCs); every image is then really decoded.
    JPEGs are decoded at reduced scale (``draft``), which still reads every
    entropy-coded byte, so truncated and garbled files are caught at a fraction
    of the cost of a full decode.
    """
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        return f"cannot be read ({_describe(exc)})"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "PNG":
                im.verify()
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (1, 1))
            im.load()
    except Exception as exc:
        return f"cannot be decoded ({_describe(exc)})"
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
