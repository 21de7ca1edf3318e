"""Stage results in the cache name cache paths relative to it, so a moved cache is reused as it is."""

from __future__ import annotations

import io
import json
import shutil

from eftclip.pipeline.executor import execute
from eftclip.pipeline.plan import Node, Plan


def _probe(folder, params, inputs, env):
    """A stage that writes a file in its folder and names it, and reads what the stage before it wrote."""
    (folder / "out.txt").write_text(params["text"])
    read = (open(inputs["first"]["file"]).read() if "first" in inputs else "")
    return {"file": str(folder / "out.txt"), "read": read, "elsewhere": "/etc/hostname", "word": "plain"}


def _plan(cache):
    plan = Plan(cache)
    first = plan.add(Node(id="first", kind="probe", task="probe", params={"text": "one"}))
    plan.add(Node(id="second", kind="probe", task="probe", params={"text": "two"}, needs={"first": first}))
    return plan


def test_a_moved_cache_is_reused_and_its_paths_follow_it(tmp_path, monkeypatch):
    import eftclip.pipeline.tasks as tasks

    monkeypatch.setitem(tasks.TASKS, "probe", _probe)
    plan = _plan(tmp_path / "cache")
    results = execute(plan, env={}, stream=io.StringIO())
    assert results["second"]["read"] == "one"
    stored = json.loads((plan.folder("first") / "stage.json").read_text())["result"]
    assert stored["file"] == "${cache}/" + plan.folder("first").name + "/out.txt"
    assert stored["elsewhere"] == "/etc/hostname" and stored["word"] == "plain"  # not in the cache: untouched
    assert str(tmp_path) not in (plan.folder("second") / "stage.json").read_text()

    shutil.move(tmp_path / "cache", tmp_path / "moved")
    monkeypatch.setitem(tasks.TASKS, "probe", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    moved = _plan(tmp_path / "moved")
    again = execute(moved, env={}, stream=io.StringIO())
    assert again["first"]["file"] == str(moved.folder("first") / "out.txt")
    assert open(again["first"]["file"]).read() == "one"


def test_results_stored_with_absolute_paths_still_load(tmp_path):
    plan = _plan(tmp_path / "cache")
    old = {"checkpoint": str(tmp_path / "cache" / "x" / "final.safetensors"), "n": 3}
    assert plan.load(old) == old  # what earlier versions wrote: read unchanged
    assert plan.load(plan.store(old)) == old
