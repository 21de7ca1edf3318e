"""Run a :class:`~eftclip.pipeline.plan.Plan`: each stage once, in its cache folder.

A finished stage leaves ``stage.json`` (its result and compute seconds) in its folder and
is never run again; an interrupted one is re-entered, and its own code resumes from what
it left (training from its last checkpoint, detection from its last written image).
Stages whose needs are met run side by side in worker processes (``workers``), each with
``threads`` torch threads; with one worker they run here, in plan order.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

from eftclip.io import write_json
from eftclip.pipeline.plan import Plan, stage_result


def execute(plan: Plan, *, env: dict, workers: int = 1, threads: int | None = None,
            stream=None) -> dict[str, Any]:
    """Run every unfinished stage; return ``{id: result}`` for the whole plan.

    ``env``: run-wide settings passed to every task (device, progress); not hashed.
    ``stream``: where progress lines go (default: ``sys.stderr`` as it is at the call, not at import).
    A failing stage lets the running ones finish and keep their results, then raises.
    """
    stream = stream or sys.stderr
    numbers = {nid: i + 1 for i, nid in enumerate(plan.nodes)}
    results: dict[str, Any] = {}
    for nid in plan.nodes:
        if plan.done(nid):
            results[nid] = stage_result(plan.folder(nid))
    todo = [nid for nid in plan.nodes if nid not in results]
    if todo:
        print(f"{len(results)} of {len(plan.nodes)} stages already done; {len(todo)} to run", file=stream, flush=True)
    runner = _run_serial if workers <= 1 or len(todo) <= 1 else _run_parallel
    runner(plan, todo, results, numbers, env=env, workers=workers, threads=threads, stream=stream)
    return results


def _job(plan: Plan, nid: str, results: dict) -> tuple:
    node = plan.nodes[nid]
    inputs = {role: results[dep] for role, dep in node.needs.items()}
    return node.task, str(plan.folder(nid)), node.params, inputs, node.speed


def _record(plan: Plan, nid: str, result: Any, seconds: float) -> None:
    node = plan.nodes[nid]
    write_json(plan.folder(nid) / "stage.json", {"id": nid, "kind": node.kind, "key": plan.keys[nid],
                                                 "seconds": seconds, "result": plan.store(result)})


def _line(stream, numbers: dict, plan: Plan, nid: str, text: str) -> None:
    label = plan.nodes[nid].label or nid
    print(f"[{numbers[nid]}/{len(plan.nodes)}] {nid}: {label} {text}", file=stream, flush=True)


def _run_serial(plan, todo, results, numbers, *, env, workers, threads, stream) -> None:
    from eftclip.threads import torch_threads

    with torch_threads(threads):
        for nid in todo:
            _line(stream, numbers, plan, nid, "...")
            result, seconds = run_task(*_job(plan, nid, results), env)
            _record(plan, nid, result, seconds)
            results[nid] = result
            _line(stream, numbers, plan, nid, f"done in {seconds:.0f}s")


def _run_parallel(plan, todo, results, numbers, *, env, workers, threads, stream) -> None:
    quiet = {**env, "progress": False}  # several bars at once would interleave
    waiting = list(todo)
    running: dict[cf.Future, str] = {}
    errors: list[BaseException] = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=worker_init, initargs=(threads,)) as pool:
        while waiting or running:
            ready = [n for n in waiting if all(d in results for d in plan.nodes[n].needs.values())]
            for nid in ready[: max(0, workers - len(running))] if not errors else []:
                waiting.remove(nid)
                (plan.folder(nid)).mkdir(parents=True, exist_ok=True)
                _line(stream, numbers, plan, nid, "... (in parallel)")
                running[pool.submit(run_task, *_job(plan, nid, results), quiet)] = nid
            if not running:
                break  # only stages behind a failed one are left
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                nid = running.pop(fut)
                try:
                    result, seconds = fut.result()
                except BaseException as exc:  # noqa: BLE001 - the others finish and keep their results
                    errors.append(exc)
                    continue
                _record(plan, nid, result, seconds)
                results[nid] = result
                _line(stream, numbers, plan, nid, f"done in {seconds:.0f}s")
    if errors:
        raise errors[0]


def run_task(task: str, folder: str, params: dict, inputs: dict, speed: dict, env: dict) -> tuple[Any, float]:
    """Call task ``task`` in ``folder``; return its (plain JSON) result and its seconds."""
    from eftclip.io import plain_json
    from eftclip.pipeline.tasks import TASKS
    from eftclip.progress import progress_bars

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "inputs.json", {"task": task, "params": params})
    t0 = time.perf_counter()
    with progress_bars(env.get("progress", True)):
        result = TASKS[task](path, params, inputs, {**env, **speed})
    return plain_json(result), time.perf_counter() - t0


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
