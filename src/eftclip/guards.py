"""Cheap checks every verb runs before any heavy work.

The command line's promises (see ``docs/reliability.md``) rest on these:
an output never is, contains or lies inside an input; counts are counts;
a device exists before a model is moved to it; a broken model (NaN or
infinite features) is refused rather than scored.  Each failure is an
:class:`~eftclip.errors.EftclipError` that names the flag and the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from eftclip.errors import EftclipError

PathLike = str | os.PathLike


def _resolved(path: PathLike) -> Path:
    # resolve() follows symlinks, so a link to an input is caught as that input
    return Path(path).expanduser().resolve()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_io(inputs: Mapping[str, PathLike | None], outputs: Mapping[str, PathLike | None]) -> None:
    """Refuse an output that is, contains or lies inside an input.

    ``inputs`` and ``outputs`` map a flag (``"--checkpoint"``) to a path;
    ``None`` entries are skipped, and so are inputs that are not local paths
    (a model name, ``"mined"``, a hub id): only paths that exist count.
    Called before any work, so a refused run leaves everything untouched.
    """
    existing = {flag: _resolved(p) for flag, p in inputs.items() if p is not None and Path(p).exists()}
    for oflag, opath in outputs.items():
        if opath is None:
            continue
        out = _resolved(opath)
        for iflag, inp in existing.items():
            if out == inp:
                how = "is"
            elif _within(inp, out):
                how = "contains"
            elif _within(out, inp):
                how = "lies inside"
            else:
                continue
            raise EftclipError(
                f"{oflag} {opath}: the output {how} the input {iflag} {inputs[iflag]}; "
                "eftclip never writes over its inputs, choose an output outside them"
            )


def check_count(value: Any, flag: str, *, zero_means_all: bool = False, optional: bool = True) -> Any:
    """``value`` if it is a count (an int >= 1, or 0 when ``zero_means_all``); None passes (= the default).

    ``optional``: the flag may be left out to mean "all", which the error then says.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EftclipError(f"{flag} must be a whole number, got {value!r}")
    least = 0 if zero_means_all else 1
    if value < least:
        meaning = " (0 means all)" if zero_means_all else " (leave it out for all)" if optional else ""
        raise EftclipError(f"{flag} must be at least {least}{meaning}, got {value}")
    return value


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse a torch device this machine does not have, before any model is loaded.

    ``auto`` and ``None`` pass (the caller picks what exists).  Without this,
    a missing CUDA device surfaces as a driver traceback deep in ``model.to``.
    """
    if device is None or device == "auto":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EftclipError(f"{flag} {device!r}: not a torch device (e.g. cpu, cuda, cuda:1)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EftclipError(f"{flag} {device}: this machine has no usable CUDA device; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EftclipError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise EftclipError(f"{flag} {device}: MPS is not available on this machine; use --device cpu")


def require_finite(values: Any, what: str) -> None:
    """Refuse a tensor or array holding NaN or infinite values, naming ``what`` it is.

    Used on a model's features before any score is computed from them: a NaN
    model otherwise "wins" every comparison and reads as a perfect or a clean one.
    """
    import numpy as np
    import torch

    if isinstance(values, torch.Tensor):
        bad = int((~torch.isfinite(values.detach())).sum())
        total = values.numel()
    else:
        arr = np.asarray(values, dtype=np.float64)
        bad, total = int((~np.isfinite(arr)).sum()), arr.size
    if bad:
        raise EftclipError(
            f"{what}: {bad} of {total} values are NaN or infinite; the model is broken "
            "(often trained with too high a learning rate) and is not scored"
        )


def check_owned(folder: PathLike, marker: str, flag: str, what: str) -> None:
    """Refuse to delete ``folder`` unless eftclip wrote it (its ``marker`` file is there).

    ``--force``/``--overwrite`` may remove only what eftclip itself made; an
    empty folder or a missing one is always fine.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise EftclipError(f"{flag} {folder}: exists and is not a folder; eftclip will not remove it")
    if any(folder.iterdir()) and not (folder / marker).is_file():
        raise EftclipError(
            f"{flag} {folder}: not empty and holds no {marker}, so it is not {what} that eftclip wrote; "
            "eftclip deletes only its own outputs, choose another folder or empty it yourself"
        )


def check_output_file(path: PathLike, flag: str) -> None:
    """Refuse an output file path that cannot be written (a folder, or under a file), before the work."""
    path = Path(path)
    if path.is_dir():
        raise EftclipError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'metrics.json'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EftclipError(f"{flag} {path}: {parent} is a file, so nothing can be written under it")
    if not os.access(parent, os.W_OK):
        raise EftclipError(f"{flag} {path}: {parent} is not writable")
