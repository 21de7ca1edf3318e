"""One line, not a traceback, for a machine that runs out of something.

A full disk or a missing CUDA device is the user's environment, not a bug:
:func:`resource_message` turns the exceptions they raise (some from deep in
torch, which wraps ENOSPC in a ``RuntimeError``) into a sentence naming the
resource; anything it does not recognise returns None and keeps its traceback.
"""

from __future__ import annotations

import errno

# (substring of the exception text, what ran out, what to do); checked in order
_PATTERNS = (
    ("no space left on device", "the disk is full", "free some space"),
    ("file write failed", "a file could not be written (often a full disk)", "free some space"),
    ("inline_container", "a checkpoint could not be written (often a full disk)", "free some space"),
    ("out of memory", "the device ran out of memory", "lower --batch-size"),
    ("not compiled with cuda", "this torch has no CUDA support", "use --device cpu"),
    ("no nvidia driver", "this machine has no NVIDIA driver", "use --device cpu"),
    ("no cuda gpus are available", "this machine has no CUDA device", "use --device cpu"),
    ("cuda driver", "the CUDA driver failed", "use --device cpu or check the driver"),
)

_AGAIN = "files already written are intact; run the same command again once this is fixed"


def resource_message(exc: BaseException) -> str | None:
    """A one-line explanation of ``exc`` when it is a resource failure, else None."""
    if isinstance(exc, MemoryError):
        return f"out of memory; use smaller inputs or --batch-size; {_AGAIN}"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            why = exc.strerror or "No space left on device"
            return f"the disk is full ({why}, writing{where}); free some space; {_AGAIN}"
        return f"cannot read or write{where}: {exc.strerror or exc}; {_AGAIN}"
    if not isinstance(exc, (RuntimeError, AssertionError)):
        return None
    text = str(exc).lower()
    for needle, what, fix in _PATTERNS:
        if needle in text:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            return f"{what} ({first}); {fix}; {_AGAIN}"
    return None
