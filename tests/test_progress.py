"""``progress: false`` (``--no-progress``) reaches bars of library code that takes no progress argument."""

from __future__ import annotations

from eftclip.progress import bars_enabled, progress_bars


def test_world_synthesis_draws_no_bar_inside_progress_bars_false(tmp_path, capsys):
    from eftclip.world import synth

    synth(tmp_path / "loud", seed=0, size="tiny")
    assert "%|" in capsys.readouterr().err  # the bars exist, so their absence below means something
    with progress_bars(False):
        synth(tmp_path / "quiet", seed=0, size="tiny")
        assert not bars_enabled()
    assert "%|" not in capsys.readouterr().err
    assert bars_enabled(), "the setting ends with the block"


def test_a_stage_runs_under_its_runs_progress_setting(tmp_path, monkeypatch):
    import eftclip.pipeline.tasks as tasks
    from eftclip.pipeline.executor import run_task

    monkeypatch.setitem(tasks.TASKS, "probe", lambda folder, params, inputs, env: {"bars": bars_enabled()})
    quiet, _ = run_task("probe", str(tmp_path / "a"), {}, {}, {}, {"progress": False})
    loud, _ = run_task("probe", str(tmp_path / "b"), {}, {}, {}, {"progress": True})
    assert quiet == {"bars": False} and loud == {"bars": True}
