"""``eftclip evaluate`` end to end on a tiny image folder and a random tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eftclip.cli import main
from eftclip.cli.evaluate import parse_attack_params
from eftclip.errors import EftclipError
from eftclip.models import create_model, save_checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # two cores shared by many processes: one intra-op thread is several times faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    data = root / "data"
    for name in ["apple", "traffic_light", "umbrella"]:
        (data / name).mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 256, size=(int(rng.integers(24, 48)), 40, 3), dtype=np.uint8)
            Image.fromarray(img).save(data / name / f"{i}.jpg")
    bundle = create_model("eftclip-tiny-rn", seed=0)
    ckpt = save_checkpoint(bundle.model, root / "model.safetensors", model_name=bundle.name,
                           meta={"made_by": "test"})
    templates = root / "templates.json"
    templates.write_text(json.dumps(["a photo of a {}.", "a {}."]))
    return {"data": data, "ckpt": ckpt, "templates": templates, "root": root, "bundle": bundle}


def test_evaluate_cli_writes_json(world, capsys):
    out = world["root"] / "results" / "eval.json"
    rc = main([
        "evaluate", "--checkpoint", str(world["ckpt"]), "--data", str(world["data"]),
        "--templates", str(world["templates"]), "--attack", "badnet", "--attack-params", "size=6",
        "position=random", "--target", "umbrella", "--batch-size", "5", "--out", str(out), "--quiet",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "CA top-1" in printed and "ASR" in printed and "traffic light" in printed
    result = json.loads(out.read_text())
    m = result["metrics"]
    assert m["n"] == 12 and m["n_asr"] == 8 and m["target"] == "umbrella"
    for key in ("ca_top1", "ca_top5", "asr"):
        assert 0.0 <= m[key] <= 1.0
    assert m["ca_top5"] == 1.0  # three classes
    assert set(m["per_class"]) == {"apple", "traffic light", "umbrella"}
    cfg = result["config"]
    assert cfg["model"] == "eftclip-tiny-rn"  # from the checkpoint's side file
    assert cfg["attack"]["name"] == "badnet" and cfg["attack"]["params"]["size"] == 6
    assert cfg["target"] == "umbrella" and cfg["n_templates"] == 2 and cfg["precision"] == "fp32"
    # paths relative to the JSON's folder, never this machine's absolute ones
    assert cfg["checkpoint"] == "../model.safetensors" and not Path(cfg["data"]).is_absolute()
    assert (out.parent / cfg["data"]).resolve() == Path(world["data"]).resolve()
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]  # no temporary leftovers


def test_evaluate_cli_foreign_checkpoint_and_json_params(world, tmp_path):
    pt = tmp_path / "clip.pt"
    torch.save({"epoch": 1, "name": "x", "state_dict": {f"module.{k}": v for k, v in
                world["bundle"].model.state_dict().items()}}, pt)
    out = tmp_path / "e.json"
    rc = main(["evaluate", "--checkpoint", str(pt), "--model", "eftclip-tiny-rn", "--data", str(world["data"]),
               "--templates", str(world["templates"]), "--attack", "blended",
               "--attack-params", '{"alpha": 0.2}', "--target", "traffic_light", "--out", str(out), "--quiet"])
    assert rc == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["target"] == "traffic light"  # a folder name is accepted and reported by display name
    assert m["n_asr"] == 8


def test_evaluate_cli_target_not_among_classes(world, tmp_path, capsys):
    out = tmp_path / "e.json"
    rc = main(["evaluate", "--checkpoint", str(world["ckpt"]), "--data", str(world["data"]),
               "--templates", str(world["templates"]), "--attack", "badnet", "--target", "banana",
               "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "target 'banana' is not one of the class names" in err
    assert "'apple'" in err and "'umbrella'" in err
    assert not out.exists()


def test_evaluate_cli_flag_errors(world, capsys):
    base = ["evaluate", "--checkpoint", str(world["ckpt"]), "--data", str(world["data"]), "--quiet"]
    assert main(base + ["--attack", "badnet"]) == 2
    assert "--attack needs --target" in capsys.readouterr().err
    assert main(base + ["--attack-params", "size=3"]) == 2
    assert "--attack-params given without --attack" in capsys.readouterr().err
    assert main(base + ["--attack", "nosuch", "--target", "apple"]) == 2
    assert "nosuch" in capsys.readouterr().err
    pt = world["root"] / "bare.pt"
    torch.save(world["bundle"].model.state_dict(), pt)
    rc = main(["evaluate", "--checkpoint", str(pt), "--data", str(world["data"]), "--quiet"])
    assert rc == 2
    assert "pass the model name" in capsys.readouterr().err


def test_parse_attack_params():
    assert parse_attack_params(['{"size": 8, "position": "random"}']) == {"size": 8, "position": "random"}
    # decoded as every verb's KEY=VALUE: numbers as numbers, words as strings
    assert parse_attack_params(["size=8", "pattern-seed=3", "position=top-left"]) == {
        "size": 8, "pattern_seed": 3, "position": "top-left"}
    with pytest.raises(EftclipError, match="--attack-params 'size': expected KEY=VALUE"):
        parse_attack_params(["size"])
    with pytest.raises(EftclipError, match="not valid JSON"):
        parse_attack_params(["{size: 8}"])
