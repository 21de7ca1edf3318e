"""`eftclip detect` and `eftclip curate` from the command line, on a tiny real checkpoint."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from eftclip.cli import main
from cli_fixtures import fields_without_flag, flags_not_parsed, verb_parser
from eftclip.cli import detect as cli_detect

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]
NAMES = ["apple", "leaf", "sea"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import eftclip.models as models
    from eftclip.attacks import create_trigger

    tmp = tmp_path_factory.mktemp("cli")
    bundle = models.create_model("eftclip-tiny-vit", seed=0)
    ckpt = models.save_checkpoint(bundle.model, tmp / "tiny.safetensors", model_name="eftclip-tiny-vit")
    rng = np.random.default_rng(0)
    trig = create_trigger("badnet", size=6, position="top-left")
    rows, pool = [], []
    (tmp / "img").mkdir()
    for i in range(12):
        im = np.full((32, 32, 3), 128, np.uint8)
        im[10:22, 10:22] = COLOURS[i % 3]
        poisoned = i < 6 and i % 2 == 0
        if poisoned:
            im = trig.apply(im, rng).image
        Image.fromarray(im).save(tmp / "img" / f"{i}.png")
        row = {"image": f"img/{i}.png", "caption": f"an {NAMES[i % 3]} in the middle"}
        if i < 6:
            rows.append({**row, "is_poisoned": int(poisoned)})
        else:
            pool.append(row)
    for name, data, cols in (("data.csv", rows, ["image", "caption", "is_poisoned"]),
                             ("pool.csv", pool, ["image", "caption"])):
        with open(tmp / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, cols)
            w.writeheader()
            w.writerows(data)
    (tmp / "vocab.txt").write_text("\n".join(NAMES) + "\n")
    return tmp, ckpt


def _detect_args(tmp, ckpt, out, *extra):
    return ["detect", "--checkpoint", str(ckpt), "--images", str(tmp / "data.csv"), "--vocab", str(tmp / "vocab.txt"),
            "--labels", "umbrella", "--oracle", "reference", "--oracle-arg", f"labeller_checkpoint={ckpt}",
            "--oracle-arg", "regions=foreground", "--tau", "3", "--theta", "0.4", "--min-count", "1",
            "--target", "umbrella", "--batch-size", "4", "--out", str(out), *extra]


def test_detect_then_curate(setup, capsys):
    tmp, ckpt = setup
    assert main(_detect_args(tmp, ckpt, tmp / "det")) == 0
    m = json.loads((tmp / "det" / "metrics.json").read_text())
    assert m["n_images"] == 6 and m["n_poisoned"] == 3 and m["params"]["theta"] == 0.4
    assert (tmp / "det" / "vocab.txt").read_text().split() == ["apple", "leaf", "sea", "umbrella"]
    assert "flagged" in capsys.readouterr().err
    # same command again: a finished run is re-decided, nothing refused
    assert main(_detect_args(tmp, ckpt, tmp / "det")) == 0
    # other settings: refused with a message naming them
    assert main(_detect_args(tmp, ckpt, tmp / "det", "--theta", "0.2")) == 2
    assert "theta" in capsys.readouterr().err
    assert main(["curate", "--detection", str(tmp / "det"), "--pool", str(tmp / "pool.csv"), "--size", "4",
                 "--unaffected-ratio", "0.5", "--out", str(tmp / "ft"), "--seed", "1"]) == 0
    man = json.loads((tmp / "ft" / "manifest.json").read_text())
    assert man["size"] == 4 and sum(1 for _ in open(tmp / "ft" / "finetune.csv")) == 5
    # labelled by a clean CLIP instead of caption words: every pool item gets exactly one vocabulary label
    assert main(["curate", "--detection", str(tmp / "det"), "--pool", str(tmp / "pool.csv"), "--size", "3",
                 "--label-by", "clip", "--clip-checkpoint", str(ckpt), "--out", str(tmp / "ftc")]) == 0
    man = json.loads((tmp / "ftc" / "manifest.json").read_text())
    assert man["label_by"] == "clip" and man["pool_unlabelled"] == 0
    assert sum(v["available"] for v in man["labels"].values()) == 6
    assert main(["curate", "--detection", str(tmp / "det"), "--pool", str(tmp / "pool.csv"), "--size", "7",
                 "--out", str(tmp / "ft2")]) == 2
    assert "larger than the pool" in capsys.readouterr().err


def test_detect_config_file_and_bad_flags(setup, capsys):
    tmp, ckpt = setup
    cfgfile = tmp / "detect.yaml"
    cfgfile.write_text(f"checkpoint: {ckpt}\nimages: {tmp / 'data.csv'}\nvocab: {tmp / 'vocab.txt'}\ntau: 9\n")
    assert main(["detect", "--config", str(cfgfile), "--out", str(tmp / "d2")]) == 2
    assert "--tau 9 is larger than the vocabulary" in capsys.readouterr().err
    assert main(["detect", "--config", str(cfgfile), "--out", str(tmp / "d2"), "--tau", "2", "--oracle", "magic"]) == 2
    assert "unknown oracle 'magic'" in capsys.readouterr().err
    assert main(["detect", "--out", str(tmp / "d3")]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    assert main(_detect_args(tmp, ckpt, tmp / "d4", "--oracle-arg", "oops")) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    args = _detect_args(tmp, ckpt, tmp / "d6")
    args[args.index("--checkpoint") + 1] = str(tmp / "missing.safetensors")
    assert main(args) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert not (tmp / "d6" / "run.json").exists()  # no half-started run left behind
    bad = tmp / "bad.yaml"
    bad.write_text("checkpoint: x\nimages: y\nthresh: 3\n")
    assert main(["detect", "--config", str(bad), "--out", str(tmp / "d5")]) == 2
    assert "unknown key 'thresh'" in capsys.readouterr().err


# --------------------------------------------------------------------------- flags generated from DetectConfig

# every flag `eftclip detect` took before its flags were generated: none of these commands may break
OLD_DETECT_FLAGS = (
    "--config --checkpoint --model --pretrained --images --out --vocab --labels --vocab-size --vocab-min-count "
    "--oracle --oracle-arg --oracle-model --sam-model --tau --prompt-tau --theta --mode --flag-rule --evidence "
    "--min-share --min-count --target --template --crop-pad --batch-size --device --on-error --max-images "
    "--resume --force").split()


def test_every_detect_config_field_has_a_flag_and_old_names_still_parse():
    from eftclip.cli.detect import NOT_FLAGS
    from eftclip.detection.config import DetectConfig

    parser = verb_parser(cli_detect)
    missing = fields_without_flag(parser, DetectConfig, NOT_FLAGS)
    assert not missing, f"DetectConfig fields without a flag: {missing}"
    assert fields_without_flag(parser, DetectConfig) == set(NOT_FLAGS)  # the skipped ones really have none
    assert flags_not_parsed(parser, OLD_DETECT_FLAGS) == []
    options = parser._option_string_actions
    assert options["--template"].dest == "templates" and options["--oracle-arg"].dest == "oracle_args"


def test_detect_precedence_default_yaml_flag_and_oracle_model(tmp_path):
    from eftclip.cli.detect import build_config
    from eftclip.detection.config import DetectConfig
    from eftclip.oracles import MODEL_ARGS

    cfg_file = tmp_path / "detect.yaml"
    cfg_file.write_text("checkpoint: c.safetensors\nimages: data.csv\ntau: 3\ntheta: 0.3\noracle: owlv2\n"
                        "oracle_args: {threshold: 0.1}\nlabels: [cat]\n")
    parser = verb_parser(cli_detect)
    cfg = build_config(parser.parse_args(["--config", str(cfg_file), "--out", "o", "--theta", "0.5",
                                          "--template", "a {}.", "--template", "an image of a {}."]))
    assert (cfg.tau, cfg.theta, cfg.min_count) == (3, 0.5, DetectConfig.__dataclass_fields__["min_count"].default)
    assert cfg.labels == ("cat",) and cfg.templates == ("a {}.", "an image of a {}.")
    # --oracle-model names the weights of the YAML's oracle: over the YAML's oracle_args, under --oracle-arg
    key = MODEL_ARGS["owlv2"]
    cfg = build_config(parser.parse_args(["--config", str(cfg_file), "--out", "o", "--oracle-model", "org/owl"]))
    assert cfg.oracle_args == {"threshold": 0.1, key: "org/owl"}
    cfg = build_config(parser.parse_args(["--config", str(cfg_file), "--out", "o", "--oracle-model", "org/owl",
                                          "--oracle-arg", f"{key}=mine", "--oracle-arg", "threshold=0.2"]))
    assert cfg.oracle_args == {"threshold": 0.2, key: "mine"}


def _help_of(text: str, usage: str) -> str:
    """The help of one option in ``--help`` output (whitespace collapsed): what follows ``usage`` up to the next option."""
    import re

    rest = text.split(f" {usage} ", 1)[1]
    return re.split(r" (?=--[\w-]+(?: [A-Z{]|, --))", rest, maxsplit=1)[0]


def test_detect_help_shows_the_dataclass_defaults(monkeypatch):
    from eftclip.detection.config import DetectConfig

    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a default
    text = " ".join(verb_parser(cli_detect).format_help().split())
    defaults = DetectConfig.__dataclass_fields__
    for usage, name in (("--tau TAU", "tau"), ("--theta THETA", "theta"), ("--min-count MIN_COUNT", "min_count"),
                        ("--batch-size BATCH_SIZE", "batch_size"), ("--vocab VOCAB", "vocab")):
        assert _help_of(text, usage).endswith(f"(default: {defaults[name].default})"), usage
    assert f"(default: {','.join(defaults['templates'].default)})" in _help_of(text, "--template STR,...")
    assert _help_of(text, "--images IMAGES").endswith("(required, here or in --config)")
    assert "(default " not in text  # no default typed by hand ("(default 5)") is left
