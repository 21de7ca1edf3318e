"""The plan of an experiment: named stages, what each needs, and where its result is cached.

A :class:`Node` is one stage: a task (a function of :mod:`eftclip.pipeline.tasks`, by name),
its own parameters (plain JSON), and the stages it reads (``needs``, by role).  Its cache
key is a content hash of its kind, its parameters and the keys of what it reads, so the
whole plan, with every cache folder, is known before anything runs (``--plan``), and a
stage whose numbers would not change is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eftclip.errors import EftclipError


@dataclass(frozen=True)
class Node:
    """One stage of a plan."""

    id: str  # unique name in the plan, e.g. "seed0/badnet/detect"
    kind: str  # stage kind; also the cache folder's prefix
    task: str  # function name in eftclip.pipeline.tasks.TASKS
    params: dict  # the stage's own settings (plain JSON; all of it decides its numbers)
    needs: dict = field(default_factory=dict)  # role -> id of a stage whose result this one reads
    speed: dict = field(default_factory=dict)  # settings that change speed only (not hashed)
    label: str = ""  # progress line text


# stands for the cache folder in stored results (stage.json), so that a cache can move
CACHE_MARK = "${cache}"


def stage_result(folder: Path) -> Any:
    """The result a finished stage left in ``folder/stage.json``, its cache paths resolved against the cache
    folder it lies in (``folder``'s parent)."""
    from eftclip.io import read_json

    return Plan(Path(folder).parent).load(read_json(Path(folder) / "stage.json")["result"])


class Plan:
    """Nodes in the order they were added (a topological order: needs come first)."""

    def __init__(self, cache: Path):
        self.cache = Path(cache)
        self.nodes: dict[str, Node] = {}
        self.keys: dict[str, str] = {}

    def add(self, node: Node) -> str:
        """Add ``node`` (or find an identical one already there); return its id."""
        for role, dep in node.needs.items():
            if dep not in self.nodes:
                raise EftclipError(f"plan: stage '{node.id}' needs '{dep}' ({role}), which is not planned")
        key = stage_key({"kind": node.kind, "params": node.params,
                         "needs": {role: self.keys[dep] for role, dep in node.needs.items()}})
        if node.id in self.nodes:
            if self.keys[node.id] != key:
                raise EftclipError(f"plan: stage '{node.id}' planned twice with different inputs")
            return node.id
        same = next((nid for nid, k in self.keys.items() if k == key and self.nodes[nid].kind == node.kind), None)
        if same is not None:  # the same computation under another name (e.g. two defenses' identical sets): one folder, run once
            return same
        self.nodes[node.id] = node
        self.keys[node.id] = key
        return node.id

    def folder(self, node_id: str) -> Path:
        return self.cache / f"{self.nodes[node_id].kind}-{self.keys[node_id]}"

    def done(self, node_id: str) -> bool:
        return (self.folder(node_id) / "stage.json").exists()

    def store(self, result: Any) -> Any:
        """``result`` with every path inside the cache written as ``${cache}/<path>`` (what ``stage.json``
        holds), so that a cache moved or mounted elsewhere is reused; other paths are left alone."""
        root = os.path.abspath(self.cache)
        if isinstance(result, dict):
            return {k: self.store(v) for k, v in result.items()}
        if isinstance(result, list):
            return [self.store(v) for v in result]
        if isinstance(result, str) and "\n" not in result and result:
            full = os.path.abspath(result)
            if full.startswith(root + os.sep) and (os.path.isabs(result) or result.startswith(str(self.cache))):
                return f"{CACHE_MARK}/{Path(os.path.relpath(full, root)).as_posix()}"
        return result

    def load(self, stored: Any) -> Any:
        """The inverse of :meth:`store` for this plan's cache (results stored with absolute paths stay as they are)."""
        if isinstance(stored, dict):
            return {k: self.load(v) for k, v in stored.items()}
        if isinstance(stored, list):
            return [self.load(v) for v in stored]
        if isinstance(stored, str) and stored.startswith(CACHE_MARK + "/"):
            return str(self.cache / stored[len(CACHE_MARK) + 1:])
        return stored

    def describe(self) -> list[dict]:
        """Each stage with its inputs and cache folder (what ``--plan`` prints as JSON lines)."""
        return [{"id": n.id, "kind": n.kind, "task": n.task, "label": n.label, "key": self.keys[n.id],
                 "folder": str(self.folder(n.id)), "needs": dict(n.needs), "params": n.params,
                 "done": self.done(n.id)} for n in self.nodes.values()]


def stage_key(inputs: Any) -> str:
    """A short content hash of JSON data (keys sorted)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
