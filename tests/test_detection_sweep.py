"""`run_sweep`: triggers re-applied per (rho, mu), one model pass each, theta/tau from stored scores."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from eftclip.detection.sweep import SweepConfig, run_sweep
from eftclip.errors import EftclipError
from test_detection_runner import COLOURS, VOCAB, _oracle  # noqa: F401  (shared real parts)
from cli_fixtures import fields_without_flag, flags_not_parsed, verb_parser
from eftclip.cli import sweep as cli_sweep


@pytest.fixture(scope="module")
def bundle():
    import eftclip.models as models

    return models.create_model("eftclip-tiny-vit", seed=0)


@pytest.fixture()
def clean(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "clean"
    d.mkdir()
    for i in range(6):
        im = np.full((32, 32, 3), 128, np.uint8)
        x, y = rng.integers(4, 14, size=2)
        im[y : y + 10, x : x + 10] = list(COLOURS.values())[i % 4]
        Image.fromarray(im).save(d / f"{i}.png")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return d, vocab, tmp_path


def test_sweep_one_model_pass_per_patch_setting(clean, bundle):
    d, vocab, tmp = clean
    cfg = SweepConfig(checkpoint="(given)", images=str(d), out=str(tmp / "sw"), vocab=str(vocab), target="umbrella",
                      rhos=(4, 8), mus=("top-left", "random"), thetas=(0.3, 0.6), taus=(2, 3), min_count=2,
                      batch_size=4)
    oracle = _oracle()
    rows = run_sweep(cfg, oracle=oracle, bundle=bundle)
    assert len(rows) == 2 * 2 * 2 * 2
    # 6 clean images once, plus 6 triggered copies per (rho, mu): theta and tau cost nothing
    assert oracle.seen == 6 + 4 * 6
    for r in rows:
        assert r["n_poisoned"] == 6 and r["n_clean"] == 6
        assert r["detection_rate"] is None or 0.0 <= r["detection_rate"] <= 1.0
    with open(tmp / "sw" / "sweep.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 16
    assert (tmp / "sw" / "figure3.png").stat().st_size > 1000
    assert (tmp / "sw" / "figure4.png").stat().st_size > 1000
    # the triggered copies really carry the patch: a top-left 4 px patch differs from the clean image there
    again = _oracle()
    rows2 = run_sweep(cfg, oracle=again, bundle=bundle)
    assert again.seen == 0 and [r["detection_rate"] for r in rows2] == [r["detection_rate"] for r in rows]


def test_sweep_bad_values(clean, bundle):
    d, vocab, tmp = clean
    base = dict(checkpoint="x", images=str(d), out=str(tmp / "o"), vocab=str(vocab))
    with pytest.raises(EftclipError, match="--theta"):
        run_sweep(SweepConfig(**base, thetas=(0.5, 1.5), taus=(2,)), oracle=_oracle(), bundle=bundle)
    with pytest.raises(EftclipError, match="larger than the vocabulary"):
        run_sweep(SweepConfig(**base, taus=(5, 9)), oracle=_oracle(), bundle=bundle)
    with pytest.raises(EftclipError, match="larger than the 32x32"):
        run_sweep(SweepConfig(**base, rhos=(40,), mus=("top-left",), taus=(2,)), oracle=_oracle(), bundle=bundle)


# --------------------------------------------------------------------------- the command line, flags from SweepConfig

# every flag `eftclip sweep` took before its flags were generated: none of these commands may break
OLD_SWEEP_FLAGS = (
    "--checkpoint --model --pretrained --images --out --target --vocab --labels --oracle --oracle-arg --oracle-model "
    "--sam-model --trigger --trigger-arg --rho --mu --theta --tau --mode --flag-rule --min-share --min-count "
    "--no-clean --max-images --batch-size --device --seed").split()


def test_every_sweep_config_field_has_a_flag_and_old_names_still_parse():
    parser = verb_parser(cli_sweep)
    missing = fields_without_flag(parser, SweepConfig)
    assert not missing, f"SweepConfig fields without a flag: {missing}"
    assert flags_not_parsed(parser, OLD_SWEEP_FLAGS) == []
    options = parser._option_string_actions
    assert {options[f].dest for f in ("--rho", "--mu", "--theta", "--tau", "--no-clean", "--trigger-arg")} == {
        "rhos", "mus", "thetas", "taus", "include_clean", "trigger_args"}


def test_sweep_help_shows_the_dataclass_defaults(monkeypatch):
    from test_detection_cli import _help_of

    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside "bottom-right"
    text = " ".join(verb_parser(cli_sweep).format_help().split())
    defaults = SweepConfig.__dataclass_fields__
    for usage, name in (("--rho INT,...", "rhos"), ("--theta FLOAT,...", "thetas"), ("--mu STR,...", "mus")):
        shown = ",".join(map(str, defaults[name].default))
        assert f"(default: {shown}); comma-separated, repeatable" in _help_of(text, usage), usage
    assert _help_of(text, "--clean, --no-clean").endswith(f"(default: {defaults['include_clean'].default})")
    assert "(default " not in text  # no default typed by hand is left


def test_sweep_command_line_yaml_and_flags(clean, bundle, capsys):
    from eftclip.cli import main
    from eftclip.config import load_yaml
    from eftclip.io import read_json
    from eftclip.models import save_checkpoint

    d, vocab, tmp = clean
    ckpt = save_checkpoint(bundle.model, tmp / "tiny.safetensors", model_name="eftclip-tiny-vit")
    cfg_file = tmp / "sweep.yaml"
    cfg_file.write_text(f"images: {d}\nvocab: {vocab}\nthetas: [0.9]\ntaus: [3]\nmin_count: 2\n"
                        "trigger_args: {pattern: noise, pattern_seed: 0}\n")
    argv = ["sweep", "--config", str(cfg_file), "--checkpoint", str(ckpt), "--out", str(tmp / "sw"),
            "--rho", "4", "--mu", "top-left", "--theta", "0.3,0.6", "--no-clean", "--batch-size", "4",
            "--trigger-arg", "pattern_seed=7", "--oracle-arg", f"labeller_checkpoint={ckpt}",
            "--oracle-arg", "regions=foreground", "--oracle-arg", "wordnet=false"]
    assert main(argv) == 0
    saved = load_yaml(tmp / "sw" / "config.yaml")
    assert saved["rhos"] == [4] and saved["mus"] == ["top-left"] and saved["include_clean"] is False
    assert saved["thetas"] == [0.3, 0.6] and saved["taus"] == [3] and saved["min_count"] == 2  # flag > YAML > default
    assert saved["trigger_args"] == {"pattern": "noise", "pattern_seed": 7}
    assert saved["oracle_args"]["wordnet"] is False and saved["batch_size"] == 4 and saved["seed"] == 0
    assert len(read_json(tmp / "sw" / "sweep.json")) == 2  # 1 rho x 1 mu x 2 thetas x 1 tau
    assert "sweep: 2 settings" in capsys.readouterr().err
    # a bad item of a list flag: one error naming the flag, nothing written
    assert main(argv[:-2] + ["--rho", "4,big", "--out", str(tmp / "sw2")]) == 2
    assert "--rho '4,big': expected comma-separated int values" in capsys.readouterr().err
    assert not (tmp / "sw2").exists()
