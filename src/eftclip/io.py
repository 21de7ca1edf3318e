"""Crash-safe file output.

Everything the project writes goes through these helpers so that an
interrupted run never leaves a half-written file: data are written to a
temporary file in the same folder, flushed to disk, then renamed over the
destination (``os.replace`` is atomic on POSIX).  Append-only logs
(``*.jsonl``) are flushed and synced line by line and are read back with
:func:`read_jsonl`, which drops a torn last line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _umask_mode() -> int:
    # mkstemp creates 0600 files; give results the mode an ordinary open() would
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open ``path`` for writing through a temporary file renamed into place on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``mode`` is ``"w"`` (text) or ``"wb"`` (binary).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {"encoding": encoding, "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds.

    For writers that want a file name rather than a handle (``safetensors``,
    ``PIL.Image.save``, matplotlib).  The temporary name keeps the suffix of
    ``path`` so that format detection by extension still works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as strict JSON to ``path`` atomically (keys in insertion order; see :func:`dumps`)."""
    write_text(path, dumps(obj, indent=indent) + "\n")


# key added to a mapping whose non-finite floats were written as null: says which ones, and why
NONFINITE_NOTE = "nonfinite_as_null"


def dumps(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON: never a ``NaN`` or ``Infinity`` literal (they are not JSON).

    Non-finite floats are written as ``null``; when ``obj`` is a mapping, the
    key :data:`NONFINITE_NOTE` lists where (``"metrics.ca_top1"``), so a
    reader can tell a missing value from a broken one.
    """
    try:
        return json.dumps(obj, indent=indent, default=json_default, allow_nan=False)
    except ValueError:
        pass  # a NaN or infinity somewhere: the slow path below finds and replaces them
    where: list[str] = []
    clean = _finite(json.loads(json.dumps(obj, default=json_default)), "", where)
    if isinstance(clean, dict) and where:
        clean[NONFINITE_NOTE] = where
    return json.dumps(clean, indent=indent, allow_nan=False)


def _finite(obj: Any, at: str, where: list[str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        where.append(at or "$")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{at}.{k}" if at else str(k), where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v, f"{at}[{i}]", where) for i, v in enumerate(obj)]
    return obj


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error when it is malformed."""
    from eftclip.errors import EftclipError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EftclipError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise EftclipError(f"{path}: not valid JSON ({exc})") from exc


def append_jsonl(fh: IO[str], obj: Any) -> None:
    """Append one JSON line to an open text handle and push it to disk."""
    fh.write(dumps(obj) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read a JSON-lines file; a torn last line (from a killed writer) is dropped.

    Callers that resume an append-only log should rewrite it from the returned
    records (see :func:`repair_jsonl`) before appending again.
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break  # torn last line of an interrupted writer
            from eftclip.errors import EftclipError

            raise EftclipError(f"{path}: line {i + 1} is not valid JSON") from None
    return out


def repair_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read ``path`` with :func:`read_jsonl` and rewrite it without a torn last line."""
    records = read_jsonl(path)
    if Path(path).exists():
        with atomic_open(path, "w") as fh:
            for rec in records:
                fh.write(dumps(rec) + "\n")
    return records


def plain_json(obj: Any) -> Any:
    """``obj`` as plain JSON data (numpy values, paths and sets converted as :func:`write_json` does)."""
    return json.loads(dumps(obj))


def json_default(obj: Any) -> Any:
    """``default=`` hook for ``json.dumps``: numpy scalars/arrays, paths and sets."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def portable_paths(obj: Any, base: str | os.PathLike) -> Any:
    """``obj`` with every absolute path string rewritten relative to ``base`` (POSIX separators).

    Results meant to be committed (``benchmarks/results/``) must not carry the
    folders of the machine that made them: write paths relative to the
    repository (or the config file) with this before :func:`write_json`.
    Strings that are not absolute paths are left alone.
    """
    if isinstance(obj, dict):
        return {k: portable_paths(v, base) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable_paths(v, base) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and "\n" not in obj:
        return Path(os.path.relpath(obj, base)).as_posix()
    return obj
