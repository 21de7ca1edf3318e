"""Resumable stage-by-stage execution for long pipelines.

A pipeline owns an output folder.  ``run.json`` in it records the kind of
pipeline and its resolved configuration; each finished stage leaves
``stages/<name>.json`` holding its result (JSON) and its wall time.  Running
the same command again skips finished stages and re-enters the interrupted
one, whose own code resumes from what it left (training resumes from its last
checkpoint, detection from its last written image).

An output folder that holds anything else (another pipeline's run, another
configuration, unrelated files) is refused unless the user says ``resume``
(continue with the new configuration, keeping finished stages) or ``force``
(delete the folder's contents and start over).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from eftclip.errors import EftclipError
from eftclip.io import read_json, write_json


class StageRunner:
    """Runs named stages once each, printing one progress line per stage."""

    def __init__(self, out: str | Path, *, kind: str, config: dict[str, Any], total: int,
                 resume: bool = False, force: bool = False, stream=sys.stderr):
        self.out = Path(out)
        self.kind = kind
        self.config = json.loads(json.dumps(config))  # plain JSON data, comparable
        self.total = total
        self.stream = stream
        self.index = 0
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._claim(resume=resume, force=force)

    # -- output folder ------------------------------------------------------------
    def _claim(self, *, resume: bool, force: bool) -> None:
        run_file = self.out / "run.json"
        if self.out.exists() and any(self.out.iterdir()):
            if force:
                for child in self.out.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            elif not run_file.exists():
                raise EftclipError(
                    f"{self.out}: folder is not empty and holds no eftclip {self.kind} run; "
                    "choose another --out, or pass --force to delete its contents")
            else:
                previous = read_json(run_file)
                if previous.get("kind") != self.kind:
                    raise EftclipError(
                        f"{self.out}: holds an eftclip {previous.get('kind')!r} run, not a {self.kind}; "
                        "choose another --out, or pass --force to delete it")
                if previous.get("config") != self.config and not resume:
                    diff = sorted(_diff_keys(previous.get("config", {}), self.config))
                    raise EftclipError(
                        f"{self.out}: holds a {self.kind} run with another configuration "
                        f"(differs in: {', '.join(diff[:8])}); pass --resume to continue it with the "
                        "new settings (finished stages are kept) or --force to start over")
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(run_file, {"kind": self.kind, "config": self.config})

    # -- stages -----------------------------------------------------------------------
    def done(self, name: str) -> bool:
        return (self.out / "stages" / f"{name}.json").exists()

    def result(self, name: str) -> Any:
        return read_json(self.out / "stages" / f"{name}.json")["result"]

    def run(self, name: str, fn: Callable[[], Any], *, label: str | None = None) -> Any:
        """Run stage ``name`` unless it already finished; return its (JSON) result."""
        self.index += 1
        label = label or name
        marker = self.out / "stages" / f"{name}.json"
        prefix = f"[{self.index}/{self.total}] {label}"
        if marker.exists():
            record = read_json(marker)
            self.seconds[name] = record.get("seconds", 0.0)
            print(f"{prefix}: done earlier ({record.get('seconds', 0.0):.0f}s)", file=self.stream, flush=True)
            return record["result"]
        print(f"{prefix} ...", file=self.stream, flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        self.seconds[name] = seconds
        write_json(marker, {"stage": name, "seconds": seconds, "result": result})
        print(f"{prefix}: done in {seconds:.0f}s", file=self.stream, flush=True)
        return result

    def total_seconds(self) -> float:
        """Wall time of all stages, counting stages finished in earlier invocations."""
        return float(sum(self.seconds.values()))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".") or "(root)"}
