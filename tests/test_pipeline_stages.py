"""The resumable stage runner and the demo's input checks (no training here)."""

from __future__ import annotations

import errno
import io
import json

import pytest

from eftclip.cli import main
from eftclip.errors import EftclipError
from eftclip.pipeline.stages import StageRunner


def test_stage_runs_once_and_result_is_reused(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"value": 42}

    r1 = StageRunner(tmp_path / "run", kind="demo", config={"a": 1}, total=1, stream=io.StringIO())
    assert r1.run("s", work) == {"value": 42}
    r2 = StageRunner(tmp_path / "run", kind="demo", config={"a": 1}, total=1, stream=io.StringIO())
    assert r2.run("s", work) == {"value": 42}
    assert len(calls) == 1, "a finished stage must not run again"


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    runner = StageRunner(tmp_path / "run", kind="demo", config={}, total=1, stream=io.StringIO())

    def boom():
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        runner.run("s", boom)
    assert not runner.done("s")
    again = StageRunner(tmp_path / "run", kind="demo", config={}, total=1, stream=io.StringIO())
    assert again.run("s", lambda: 7) == 7


def test_refuses_foreign_folder_and_other_config(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(EftclipError, match="not empty.*--force"):
        StageRunner(foreign, kind="demo", config={}, total=1)
    assert (foreign / "notes.txt").read_text() == "mine", "a refused folder is left untouched"

    StageRunner(tmp_path / "run", kind="demo", config={"seed": 0}, total=1)
    with pytest.raises(EftclipError, match=r"another configuration \(differs in: seed\)"):
        StageRunner(tmp_path / "run", kind="demo", config={"seed": 1}, total=1)
    with pytest.raises(EftclipError, match="'study' run, not a demo"):
        StageRunner(tmp_path / "run2", kind="study", config={}, total=1)
        StageRunner(tmp_path / "run2", kind="demo", config={}, total=1)


def test_resume_keeps_finished_stages_and_force_wipes(tmp_path):
    out = tmp_path / "run"
    StageRunner(out, kind="demo", config={"seed": 0}, total=1, stream=io.StringIO()).run("s", lambda: 1)
    resumed = StageRunner(out, kind="demo", config={"seed": 1}, total=1, resume=True, stream=io.StringIO())
    assert resumed.done("s")
    forced = StageRunner(out, kind="demo", config={"seed": 2}, total=1, force=True, stream=io.StringIO())
    assert not forced.done("s")
    assert json.loads((out / "run.json").read_text())["config"] == {"seed": 2}


def test_cli_reports_bad_input_and_disk_failure(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--out", str(tmp_path / "x"), "--attack", "nope"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err

    # a full disk while the stage runner records its run: a clear message, no half-written file
    import eftclip.io as eio

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(eio.os, "replace", full_disk)
    assert main(["demo", "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "run.json" in err
    leftovers = list((tmp_path / "y").glob("*"))
    assert leftovers == [], f"temporary files left behind: {leftovers}"


def test_run_group_runs_stages_in_worker_processes_and_keeps_finished_ones(tmp_path):
    import operator

    from eftclip.pipeline.stages import Job

    stream = io.StringIO()
    runner = StageRunner(tmp_path / "run", kind="demo", config={}, total=4, stream=stream)
    runner.run("first", lambda: 1)
    jobs = [Job("a", operator.add, (2, 3), label="add"), Job("b", operator.mul, (4, 5)),
            Job("c", operator.truediv, (1, 0))]
    with pytest.raises(ZeroDivisionError):
        runner.run_group(jobs, workers=2, threads=1)
    # the stages that finished keep their results; the failed one left no marker
    assert json.loads((tmp_path / "run" / "stages" / "a.json").read_text())["result"] == 5
    assert json.loads((tmp_path / "run" / "stages" / "b.json").read_text())["result"] == 20
    assert not (tmp_path / "run" / "stages" / "c.json").exists()
    assert "[2/4] add ... (in parallel)" in stream.getvalue()

    again = StageRunner(tmp_path / "run", kind="demo", config={}, total=4, stream=io.StringIO())
    again.run("first", lambda: 1)
    jobs[2] = Job("c", operator.sub, (10, 4))
    assert again.run_group(jobs, workers=2) == {"a": 5, "b": 20, "c": 6}  # one left: runs here
    record = json.loads((tmp_path / "run" / "stages" / "b.json").read_text())
    assert 0 < record["wall_seconds"] and again.total_seconds() >= record["wall_seconds"]


def test_run_group_with_one_worker_runs_in_order_here(tmp_path):
    from eftclip.pipeline.stages import Job

    order = []
    runner = StageRunner(tmp_path / "run", kind="demo", config={}, total=2, stream=io.StringIO())
    out = runner.run_group([Job("x", order.append, ("x",)), Job("y", order.append, ("y",))], workers=1)
    assert order == ["x", "y"] and out == {"x": None, "y": None}
