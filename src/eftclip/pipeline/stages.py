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
from dataclasses import dataclass, field
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
        claim_folder(self.out, kind=self.kind, config=self.config, resume=resume, force=force)

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
            return self.run_done(name, label)
        print(f"{prefix} ...", file=self.stream, flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        self.seconds[name] = seconds
        write_json(marker, {"stage": name, "seconds": seconds, "result": result})
        print(f"{prefix}: done in {seconds:.0f}s", file=self.stream, flush=True)
        return result

    def run_group(self, jobs: list[Job], *, workers: int, threads: int | None = None) -> dict[str, Any]:
        """Run independent stages, up to ``workers`` at a time, each in its own process.

        Each job's ``fn`` is called as ``fn(*args, **kwargs)`` in a fresh (spawned) process, so
        it must be importable by name and its arguments picklable.  With ``workers <= 1`` or a
        single unfinished job, the stages run here, one after another, exactly as :meth:`run`.
        ``threads``: torch threads in each worker process (two processes with one thread each
        use two cores far better than one process with two threads on a shared machine).
        Returns ``{name: result}``.  A stage records its own time as ``seconds`` and its share
        of the group's wall time as ``wall_seconds``, which :meth:`total_seconds` adds up.
        """
        pending = [j for j in jobs if not self.done(j.name)]
        if workers <= 1 or len(pending) <= 1:
            return {j.name: self.run(j.name, j.call, label=j.label) for j in jobs}
        import concurrent.futures as cf
        import multiprocessing

        results: dict[str, Any] = {}
        numbers: dict[str, int] = {}
        for j in jobs:
            self.index += 1
            numbers[j.name] = self.index
            if self.done(j.name):
                results[j.name] = self.run_done(j.name, j.label)
        t_group = time.perf_counter()
        own: dict[str, float] = {}
        errors: list[BaseException] = []
        with cf.ProcessPoolExecutor(max_workers=min(workers, len(pending)),
                                    mp_context=multiprocessing.get_context("spawn"),
                                    initializer=worker_init, initargs=(threads,)) as pool:
            futures = {}
            for j in pending:
                print(f"[{numbers[j.name]}/{self.total}] {j.label or j.name} ... (in parallel)",
                      file=self.stream, flush=True)
                futures[pool.submit(_timed, j.fn, j.args, j.kwargs)] = j
            for fut in cf.as_completed(futures):
                j = futures[fut]
                try:
                    result, seconds = fut.result()
                except BaseException as exc:  # noqa: BLE001 - the others finish and keep their results
                    errors.append(exc)
                    continue
                own[j.name] = seconds
                results[j.name] = result
                write_json(self.out / "stages" / f"{j.name}.json", {"stage": j.name, "seconds": seconds,
                                                                    "result": result})
                print(f"[{numbers[j.name]}/{self.total}] {j.label or j.name}: done in {seconds:.0f}s",
                      file=self.stream, flush=True)
        wall = time.perf_counter() - t_group
        for name, seconds in own.items():
            share = wall * seconds / max(sum(own.values()), 1e-9)
            self.seconds[name] = share
            write_json(self.out / "stages" / f"{name}.json",
                       {"stage": name, "seconds": seconds, "result": results[name], "wall_seconds": share})
        if errors:
            raise errors[0]
        return {j.name: results[j.name] for j in jobs}

    def run_done(self, name: str, label: str | None = None) -> Any:
        record = read_json(self.out / "stages" / f"{name}.json")
        self.seconds[name] = record.get("wall_seconds", record.get("seconds", 0.0))
        print(f"[{self.index}/{self.total}] {label or name}: done earlier ({record.get('seconds', 0.0):.0f}s)",
              file=self.stream, flush=True)
        return record["result"]

    def total_seconds(self) -> float:
        """Wall time of all stages, counting stages finished in earlier invocations
        (stages run side by side count their share of the group's wall time)."""
        return float(sum(self.seconds.values()))


def claim_folder(out: Path, *, kind: str, config: dict[str, Any], resume: bool, force: bool) -> None:
    """Make ``out`` this run's folder: refuse one that holds another run or other files.

    ``resume`` continues a run of the same kind made with another configuration (finished
    stages are kept); ``force`` deletes the folder's contents first.  Writes ``run.json``.
    """
    out = Path(out)
    config = json.loads(json.dumps(config))  # plain JSON data, comparable
    run_file = out / "run.json"
    if out.exists() and any(out.iterdir()):
        if not run_file.exists():
            raise EftclipError(
                f"{out}: folder is not empty and holds no eftclip {kind} run; choose another --out "
                "(--force deletes only a folder eftclip made)")
        if force:
            _empty(out)
        else:
            _check_previous(out, read_json(run_file), kind=kind, config=config, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"kind": kind, "config": config})


def _empty(out: Path) -> None:
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _check_previous(out: Path, previous: dict, *, kind: str, config: dict, resume: bool) -> None:
    if previous.get("kind") != kind:
        raise EftclipError(
            f"{out}: holds an eftclip {previous.get('kind')!r} run, not a {kind}; "
            "choose another --out, or pass --force to delete it")
    if previous.get("config") != config and not resume:
        diff = sorted(_diff_keys(previous.get("config", {}), config))
        raise EftclipError(
            f"{out}: holds a {kind} run with another configuration "
            f"(differs in: {', '.join(diff[:8])}); pass --resume to continue it with the "
            "new settings (finished stages are kept) or --force to start over")


@dataclass(frozen=True)
class Job:
    """One stage of :meth:`StageRunner.run_group`: ``fn(*args, **kwargs)`` in a worker process."""

    name: str  # stage name (stages/<name>.json)
    fn: Callable[..., Any]  # a module-level function (pickled by name)
    args: tuple = ()  # positional arguments (picklable)
    kwargs: dict = field(default_factory=dict)  # keyword arguments (picklable)
    label: str | None = None  # progress line text

    def call(self) -> Any:
        return self.fn(*self.args, **self.kwargs)


def worker_init(threads: int | None) -> None:
    """Worker set-up: die with the parent (a killed demo leaves no orphan writing its folder)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool still ends its workers on exit
        pass
    if threads:
        import torch

        torch.set_num_threads(threads)


def _timed(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".") or "(root)"}
