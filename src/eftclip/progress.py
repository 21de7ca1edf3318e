"""Whether progress bars are drawn: a run's ``progress: false`` (``--no-progress``) reaches every bar.

Functions with a ``progress`` argument take it from their caller.  Bars deep in
library code that has no such argument (the world's synthesis, the image check
of a caption table) ask :func:`bars_enabled`, which a run sets for the work it
calls with :func:`progress_bars`.  A context variable, not a process global:
it is set around each stage, in the worker process that runs it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("eftclip_progress_bars", default=True)


def bars_enabled() -> bool:
    """True unless the running code is inside ``progress_bars(False)``."""
    return _ENABLED.get()


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Draw bars (``True``) or not (``False``) for the work inside the block."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)
