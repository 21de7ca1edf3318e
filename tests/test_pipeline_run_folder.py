"""An experiment's output folder: claimed for one run, other folders refused untouched."""

from __future__ import annotations

import errno
import json

import pytest

from eftclip.cli import main
from eftclip.errors import EftclipError
from eftclip.pipeline.run_folder import claim_folder


def test_refuses_foreign_folder_and_other_config(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(EftclipError, match="not empty.*--force"):
        claim_folder(foreign, kind="demo", config={}, resume=False, force=True)
    assert (foreign / "notes.txt").read_text() == "mine", "a refused folder is left untouched, --force or not"

    claim_folder(tmp_path / "run", kind="demo", config={"seed": 0}, resume=False, force=False)
    with pytest.raises(EftclipError, match=r"another configuration \(differs in: seed\)"):
        claim_folder(tmp_path / "run", kind="demo", config={"seed": 1}, resume=False, force=False)
    claim_folder(tmp_path / "run2", kind="study", config={}, resume=False, force=False)
    with pytest.raises(EftclipError, match="'study' run, not a demo"):
        claim_folder(tmp_path / "run2", kind="demo", config={}, resume=True, force=False)


def test_nested_differences_are_named_by_their_path(tmp_path):
    claim_folder(tmp_path / "run", kind="study", config={"source": {"kind": "world", "size": "quick"}},
                 resume=False, force=False)
    with pytest.raises(EftclipError, match=r"differs in: source\.size\)"):
        claim_folder(tmp_path / "run", kind="study", config={"source": {"kind": "world", "size": "default"}},
                     resume=False, force=False)


def test_a_field_added_since_at_its_old_value_is_no_difference(tmp_path):
    """A run made before 'channels_last' existed (and with the legacy 'eda_synonyms: table' written out)
    is the same configuration as today's at those values; another value is a difference."""
    claim_folder(tmp_path, kind="experiment", config={"finetune": {"lr": 1, "eda_synonyms": "table"}},
                 resume=False, force=False)
    claim_folder(tmp_path, kind="experiment", config={"finetune": {"lr": 1, "channels_last": False}},
                 resume=False, force=False)
    with pytest.raises(EftclipError, match="finetune.channels_last"):
        claim_folder(tmp_path, kind="experiment", config={"finetune": {"lr": 1, "channels_last": True}},
                     resume=False, force=False)


def test_run_json_holds_paths_relative_to_the_folder_and_old_absolute_ones_still_match(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data.csv"
    claim_folder(out, kind="defend", config={"data": str(data)}, resume=False, force=False)
    assert json.loads((out / "run.json").read_text())["config"] == {"data": "../data.csv"}
    (out / "run.json").write_text(json.dumps({"kind": "defend", "config": {"data": str(data)}}))
    claim_folder(out, kind="defend", config={"data": str(data)}, resume=False, force=False)


def test_resume_keeps_the_contents_and_force_wipes(tmp_path):
    out = tmp_path / "run"
    claim_folder(out, kind="demo", config={"seed": 0}, resume=False, force=False)
    (out / "report.md").write_text("kept")
    claim_folder(out, kind="demo", config={"seed": 1}, resume=True, force=False)
    assert (out / "report.md").read_text() == "kept"
    assert json.loads((out / "run.json").read_text())["config"] == {"seed": 1}
    claim_folder(out, kind="demo", config={"seed": 2}, resume=False, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    assert json.loads((out / "run.json").read_text())["config"] == {"seed": 2}


def test_cli_reports_bad_input_and_disk_failure(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--out", str(tmp_path / "x"), "--attack", "nope"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err

    # a full disk while the run folder is claimed: a clear message, no half-written file
    import eftclip.io as eio

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(eio.os, "replace", full_disk)
    assert main(["demo", "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "run.json" in err
    leftovers = list((tmp_path / "y").glob("*"))
    assert leftovers == [], f"temporary files left behind: {leftovers}"
