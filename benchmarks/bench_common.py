"""What the benchmark scripts share."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line() -> str:
    """This process's command as a shell line, the interpreter relative to the working directory
    (``.venv/bin/python``) when it lies under it: results never name a machine's absolute paths."""
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        exe = Path(exe.name)
    return shlex.join([str(exe), *sys.argv])
