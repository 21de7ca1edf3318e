"""Pass-1 records on disk: the resumable per-image log, torchrun shards, the merge into dataset order.

One JSON line per image (see :mod:`eftclip.detection.scoring`) is appended to
``images.jsonl`` as soon as its batch is done; under torchrun (``RANK`` /
``WORLD_SIZE``, read by :func:`eftclip.training.distributed.world_from_env`)
rank ``r`` takes images ``i % world == r`` and writes ``images.rank{r}.jsonl``,
then ``rank{r}.done``; rank 0 waits for every marker and merges.  A killed run
resumes: the log is repaired (torn last line dropped) and images already in it
are skipped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from eftclip.detection.scoring import ClipScorer, examine_batch
from eftclip.detection.sources import ImageItem
from eftclip.errors import EftclipError

# what rank 0 deletes on --force: the merged log and every output of pass 2
OUTPUT_FILES = ("images.jsonl", "triggers.json", "affected_labels.csv", "metrics.json", "figure7.png")


@dataclass(frozen=True)
class Shard:
    """This process's part of a (possibly torchrun) detection run."""

    out: Path  # the run folder
    rank: int  # 0..world-1
    world: int  # number of processes

    @classmethod
    def from_env(cls, out: Path) -> "Shard":
        from eftclip.training.distributed import world_from_env

        rank, _, world = world_from_env()
        return cls(out, rank, world)

    @property
    def merged(self) -> Path:
        return self.out / "images.jsonl"

    @property
    def log(self) -> Path:
        """Where this process appends its records (the merged log itself for a single process)."""
        return self.merged if self.world == 1 else self.out / f"images.rank{self.rank}.jsonl"

    @property
    def done_marker(self) -> Path:
        return self.out / f"rank{self.rank}.done"

    def mine(self, items: Sequence[ImageItem]) -> list[tuple[int, ImageItem]]:
        """``(dataset index, item)`` of the images this rank examines."""
        return [(i, it) for i, it in enumerate(items) if i % self.world == self.rank]


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """Stream the JSON lines of ``path`` (a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):
                    return
                raise EftclipError(f"{path}: line {line_no} is not valid JSON") from None


def run_pass1(
    items: Sequence[tuple[int, ImageItem]],
    log_path: Path,
    scorer: ClipScorer,
    oracle,
    *,
    prompt_tau: int,
    batch_size: int,
    crop_pad: float = 0.0,
    on_error: str = "skip",
    done: set[str] | None = None,
    desc: str = "detect",
) -> dict:
    """Examine ``(index, item)`` pairs not in ``done``; append their records to ``log_path``.

    Returns ``{"examined", "skipped_before", "failed"}``.
    """
    from tqdm import tqdm

    from eftclip.io import append_jsonl

    done = set() if done is None else done
    todo = [(i, it) for i, it in items if it.key not in done]
    failed = 0
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as fh, tqdm(
        total=len(todo), desc=desc, unit="img", file=sys.stderr, disable=None
    ) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = []
            for index, item in chunk:
                try:
                    im = item.load()
                except EftclipError as exc:
                    reason = str(exc)
                except Exception as exc:  # unreadable or truncated image files
                    reason = f"{type(exc).__name__}: {exc}"
                else:
                    batch.append((index, item, im))
                    continue
                if on_error == "fail":
                    raise EftclipError(f"{item.ref}: cannot load image (key {item.key}): {reason}")
                failed += 1
                append_jsonl(
                    fh,
                    {"key": item.key, "index": index, "image": item.ref, "is_poisoned": item.is_poisoned,
                     "error": reason},
                )
            if batch:
                for rec in examine_batch(batch, scorer, oracle, prompt_tau, crop_pad):
                    append_jsonl(fh, rec)
            bar.update(len(chunk))
    return {"examined": len(todo) - failed, "skipped_before": len(items) - len(todo), "failed": failed}



def run_shard(shard: Shard, items: Sequence[ImageItem], scorer: ClipScorer, oracle, *, prompt_tau: int,
              batch_size: int, crop_pad: float, on_error: str) -> dict:
    """Pass 1 over this rank's images, resuming its log; under torchrun, then mark the rank done.

    Returns :func:`run_pass1`'s counts.
    """
    from eftclip.io import repair_jsonl, write_text

    done = {r["key"] for r in repair_jsonl(shard.log)}
    if shard.log != shard.merged:
        done |= {r["key"] for r in iter_records(shard.merged)}
        shard.done_marker.unlink(missing_ok=True)
    stats = run_pass1(
        shard.mine(items), shard.log, scorer, oracle, prompt_tau=prompt_tau, batch_size=batch_size,
        crop_pad=crop_pad, on_error=on_error, done=done,
        desc=f"detect (rank {shard.rank})" if shard.world > 1 else "detect",
    )
    if shard.world > 1:
        write_text(shard.done_marker, json.dumps(stats) + "\n")
    return stats


def gather_shards(shard: Shard, keys: Sequence[str], timeout: float) -> None:
    """Rank 0: wait for every rank, fold their logs into ``images.jsonl``, put it in dataset order."""
    order = {k: i for i, k in enumerate(keys)}
    if shard.world > 1:
        _wait_for_ranks(shard.out, shard.world, timeout)
        _merge(shard.out, shard.world, order)
    _sort_log(shard.merged, order)


def clear_for_force(shard: Shard) -> None:
    """``--force``: each rank clears its own shard; rank 0 the merged log and the outputs."""
    (shard.out / f"images.rank{shard.rank}.jsonl").unlink(missing_ok=True)
    shard.done_marker.unlink(missing_ok=True)
    if shard.rank == 0:
        for name in OUTPUT_FILES:
            (shard.out / name).unlink(missing_ok=True)


def check_out(shard: Shard, settings: dict, *, resume: bool, force: bool) -> None:
    """Refuse an ``out`` that holds a run made with other settings (see the runner's docstring)."""
    from eftclip.io import read_json

    out = shard.out
    run_json = out / "run.json"
    has_run = run_json.exists() or (out / "images.jsonl").exists() or any(out.glob("images.rank*.jsonl"))
    if not has_run:
        return
    if force:
        clear_for_force(shard)
        return
    if not run_json.exists():
        raise EftclipError(f"{out}: holds per-image records but no run.json; pass --force to start over")
    old = read_json(run_json)
    diff1 = sorted(k for k in settings["pass1"] if old.get("pass1", {}).get(k) != settings["pass1"][k])
    diff2 = sorted(k for k in settings["pass2"] if old.get("pass2", {}).get(k) != settings["pass2"][k])
    if diff1:
        raise EftclipError(
            f"{out}: holds a run made with different settings ({', '.join(diff1)}); "
            "its per-image records cannot be reused; pass --force to start over or choose another --out"
        )
    if diff2 and not resume:
        raise EftclipError(
            f"{out}: holds a run made with different settings ({', '.join(diff2)}); pass --resume to keep its "
            "per-image records and re-decide with the new settings, or --force to start over"
        )


def _wait_for_ranks(out: Path, world: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        missing = [r for r in range(world) if not (out / f"rank{r}.done").exists()]
        if not missing:
            return
        if time.time() > deadline:
            raise EftclipError(f"{out}: ranks {missing} did not finish within {timeout:.0f} s")
        time.sleep(2.0)


def _merge(out: Path, world: int, order: dict[str, int]) -> None:
    """Fold every rank's log into images.jsonl (one record per key, dataset order), then drop the rank files.

    Each log is already in dataset order (ranks take every world-th image in
    order), so a k-way merge streams them without holding the records in memory.
    """
    import heapq

    from eftclip.io import atomic_open

    seen: set[str] = set()
    merged = out / "images.jsonl"
    sources = [merged] + [out / f"images.rank{r}.jsonl" for r in range(world)]
    streams = [((order.get(rec["key"], -1), rec) for rec in iter_records(src)) for src in sources]
    with atomic_open(out / ".images.merged.jsonl", "w") as fh:
        for idx, rec in heapq.merge(*streams, key=lambda t: t[0]):
            if idx >= 0 and rec["key"] not in seen:
                seen.add(rec["key"])
                fh.write(json.dumps(rec) + "\n")
    os.replace(out / ".images.merged.jsonl", merged)
    for r in range(world):
        (out / f"images.rank{r}.jsonl").unlink(missing_ok=True)
        (out / f"rank{r}.done").unlink(missing_ok=True)


def _sort_log(path: Path, order: dict[str, int]) -> None:
    """Put the records of ``path`` in dataset order (Algorithm 1 grows K in that order); drop strays.

    A log written by one process is already in order; checking that streams.
    """
    from eftclip.io import atomic_open

    last, in_order = -1, True
    for r in iter_records(path):
        idx = order.get(r["key"], -1)
        if idx <= last:
            in_order = False
            break
        last = idx
    if in_order:
        return
    recs = [r for r in iter_records(path) if r["key"] in order]
    recs.sort(key=lambda r: order[r["key"]])
    with atomic_open(path, "w") as fh:
        for r in recs:
            fh.write(json.dumps(r) + "\n")

