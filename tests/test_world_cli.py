"""`eftclip world synth` and `eftclip world oracle` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from eftclip.cli import main


def test_synth_and_oracle_verbs(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["world", "synth", "--out", str(out), "--size", "tiny", "--seed", "2", "--train", "30"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["train_csv"]).is_file() and printed["root"] == str(out.absolute())
    assert sum(1 for _ in open(printed["train_csv"])) == 31  # header + 30 rows
    info = json.loads((out / "world.json").read_text())
    assert info["seed"] == 2 and info["sizes"]["train"] == 30

    # a second run into the same folder is refused with a clear message, and nothing is lost
    before = (out / "train" / "train.csv").read_bytes()
    assert main(["world", "synth", "--out", str(out), "--size", "tiny"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "train" / "train.csv").read_bytes() == before

    rc = tmp_path / "rc.safetensors"
    assert main(["world", "oracle", "--world", str(out), "--out", str(rc), "--epochs", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["region_classifier"]).is_file() and rc.with_suffix(".json").is_file()
    assert 0.0 <= printed["metrics"]["val_accuracy"] <= 1.0


def test_bad_flags_name_the_problem(tmp_path, capsys):
    assert main(["world", "synth", "--out", str(tmp_path / "x"), "--size", "huge"]) == 2
    assert "unknown world size 'huge'" in capsys.readouterr().err
    assert main(["world", "oracle", "--world", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not a synthetic world" in capsys.readouterr().err
