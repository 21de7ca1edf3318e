"""``eftclip defend`` through the command line, on a tiny world.

Real parts throughout: a small synthetic world, a real BadNet-poisoned training set and
detection set, the world's oracle (flat regions named by a region classifier trained here
on the clean reference split), tiny CLIPs.  The poisoned model trains for seconds, so the
figures say nothing; the tests check the mechanics: the verdict, the files, the stage cache,
the K-empty path and the refusals of bad input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eftclip.cli import main
from eftclip.world import WorldSize, synth, train_region_classifier, world_paths

SIZE = WorldSize(train=300, pool=80, detect=32, reference_per_class=12, eval_per_class=3)
TRIGGER = {"size": 6, "position": "bottom-right"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The world, its oracle, a detection set (16 of 32 scenes triggered) and a random-weight CLIP."""
    from eftclip.attacks import create_trigger
    from eftclip.attacks.poison import poison_dataset
    from eftclip.models import create_model, save_checkpoint

    tmp = tmp_path_factory.mktemp("defend")
    synth(tmp / "world", seed=0, size=SIZE)
    paths = world_paths(tmp / "world")
    rc = train_region_classifier(paths["reference"], tmp / "rc.safetensors", seed=0, epochs=3)
    poison_dataset(paths["detect_csv"], create_trigger("badnet", **TRIGGER), "umbrella", num=16, out=tmp / "dset",
                   seed=1, avoid_target=True, progress=False)
    random_model = tmp / "random.safetensors"
    save_checkpoint(create_model("eftclip-tiny-rn", seed=0).model, random_model, model_name="eftclip-tiny-rn", meta={})
    return {"tmp": tmp, "paths": paths, "rc": rc, "random": random_model}


@pytest.fixture(scope="module")
def suspect(world):
    """A tiny CLIP pre-trained for a few epochs on the world's pairs, 10% of them BadNet-poisoned."""
    from eftclip.attacks import create_trigger
    from eftclip.attacks.poison import poison_dataset
    from eftclip.training import TrainConfig, train

    tmp = world["tmp"]
    poison_dataset(world["paths"]["train_csv"], create_trigger("badnet", **TRIGGER), "umbrella", rate=0.1,
                   out=tmp / "ptrain", seed=0, avoid_target=True, progress=False)
    train(TrainConfig(data=str(tmp / "ptrain" / "data.csv"), model="eftclip-tiny-rn", out=str(tmp / "model"),
                      epochs=4, batch_size=64, lr=5e-3, warmup=10, crop_scale_min=1.0, device="cpu",
                      progress=False, seed=0))
    return tmp / "model" / "final.safetensors"


def _args(world, checkpoint, out, *extra) -> list[str]:
    p = world["paths"]
    return ["defend", "--checkpoint", str(checkpoint), "--data", str(world["tmp"] / "dset" / "data.csv"),
            "--pool", str(p["pool_csv"]), "--oracle", "reference", "--oracle-arg", "regions=world",
            "--oracle-arg", f"region_classifier={world['rc']}", "--oracle-arg", "wordnet=false",
            "--vocab", str(p["classnames"]), "--tau", "3", "--theta", "0.5", "--out", str(out),
            "--no-progress", "--batch-size", "16", "--size", "64", *extra]


REPAIR = ("--min-count", "2", "--min-share", "0.5", "--epochs", "1", "--recovery", "occlusion",
          "--second-look-theta", "0.15")  # the region classifier trained here for seconds is unsure


@pytest.mark.slow
def test_end_to_end_then_a_rerun_recomputes_nothing(world, suspect, capsys):
    p, out = world["paths"], world["tmp"] / "run"
    args = _args(world, suspect, out, *REPAIR, "--eval", str(p["eval"]), "--classes", str(p["classnames"]),
                 "--true-attack", "badnet", *[a for k, v in TRIGGER.items() for a in ("--true-attack-param", f"{k}={v}")])
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backdoor_found"] and metrics["target"] in metrics["detection"]["K"]
    verdict = (out / "verdict.txt").read_text()
    assert verdict.startswith(f"backdoor found: target '{metrics['target']}', ") and verdict == metrics["verdict"] + "\n"
    assert f"{metrics['detection']['n_flagged']} of 32 images flagged" in verdict
    for name in ("report.md", "config.yaml", "trigger/mask.png", "trigger/pattern.png", "trigger/trigger.json",
                 "repaired.safetensors", "repaired.json"):
        assert (out / name).is_file(), name
    for when in ("before", "after"):
        block = metrics["evaluation"][when]
        assert 0.0 <= block["ca"] <= 1.0 and 0.0 <= block["asr"] <= 1.0 and block["n"] == 36
    score = metrics["scoring_not_used_by_the_defense"]
    assert 0.0 <= score["mask_iou"] <= 1.0 and set(score["under_true_trigger"]) == {"before", "after"}
    # the eftclip recipe's share of unlearning pairs was asked for; what the second look could not caption came from the pool
    manifest = json.loads(next((out / "stages").glob("curate-*/curated/manifest.json")).read_text())
    assert manifest["unlearn"]["asked"] == 6 and manifest["unlearn_share"] == 0.1
    assert metrics["repair"]["pairs"] == 64 == metrics["repair"]["unlearn_pairs"] + metrics["repair"]["pool_pairs"]
    report = (out / "report.md").read_text()
    assert "Scoring the defense did not use" in report and "![mask](trigger/mask.png)" in report
    # the written config is relative to the output folder
    config = (out / "config.yaml").read_text()
    assert "region_classifier: ../rc.safetensors" in config and str(world["tmp"]) not in config

    stamps = {f: f.stat().st_mtime_ns for f in (out / "stages").glob("*/stage.json")}
    assert len(stamps) == 15  # the eftclip recipe stamps the recovered trigger: one stage more than without
    assert list((out / "stages").glob("stamp-*/stage.json")), "the repair set was stamped"
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "to run" not in err  # execute prints a count only when some stage is left to run
    assert {f: f.stat().st_mtime_ns for f in (out / "stages").glob("*/stage.json")} == stamps
    assert json.loads((out / "metrics.json").read_text())["evaluation"] == metrics["evaluation"]
    assert not [f for f in out.rglob(".*") if f.is_file()], "no temporary file left behind"


def test_k_empty_gives_no_backdoor_found_and_stops_before_repair(world, capsys):
    out = world["tmp"] / "clean"
    # m beyond the number of images: no label can enter K
    assert main(_args(world, world["random"], out, "--min-count", "1000")) == 0
    verdict = (out / "verdict.txt").read_text()
    assert verdict.startswith("no backdoor found: K is empty (0 of 32 images flagged)")
    assert "closest: '" in verdict and "unconfirmed in" in verdict
    metrics = json.loads((out / "metrics.json").read_text())
    assert not metrics["backdoor_found"] and metrics["detection"]["K"] == []
    closest = metrics["detection"]["closest_labels"]
    assert closest and all(0.0 <= c["share"] <= 1.0 and c["unconfirmed"] <= c["judged"] for c in closest)
    assert sorted(f.name.split("-")[0] for f in (out / "stages").iterdir()) == ["detect", "suspect"]
    assert not (out / "repaired.safetensors").exists() and not (out / "trigger").exists()
    assert "Nothing was repaired." in (out / "report.md").read_text()
    assert capsys.readouterr().err.rstrip().endswith(verdict.rstrip())


@pytest.mark.parametrize("change, message", [
    (("--pool", "missing.csv"), "--pool .*missing.csv: no such file"),
    (("--checkpoint", "missing.safetensors"), "--checkpoint .*missing.safetensors: no such file"),
    (("--size", "100000"), "--size 100000: the pool .* holds only 80 pairs"),
    (("--size", "10"), "--size 10: the repair's batch is 64"),
    (("--oracle", "nope"), "--oracle 'nope': unknown"),
    (("--eval", "."), "--eval and --classes go together"),
    (("--true-attack", "badnet"), "--true-attack needs --eval"),
    (("--vocab", "missing.txt"), "--vocab .*missing.txt: no such file"),
])
def test_bad_input_is_a_named_error_and_writes_nothing(world, capsys, tmp_path, change, message):
    import re

    args = _args(world, world["random"], tmp_path / "out")
    flag = change[0]
    if flag in args:
        args[args.index(flag) + 1] = change[1]
    else:
        args += list(change)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(args) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_other_settings_is_refused_without_resume(world, capsys):
    out = world["tmp"] / "other"
    assert main(_args(world, world["random"], out, "--min-count", "1000")) == 0
    assert main(_args(world, world["random"], out, "--min-count", "999")) == 2
    assert "another configuration (differs in: min_count)" in capsys.readouterr().err
    assert main(_args(world, world["random"], out, "--min-count", "999", "--resume")) == 0
    assert len(list(Path(out, "stages").glob("detect-*"))) == 2  # a new detection stage beside the old one


def test_suspect_by_model_and_pretrained_file(world):
    """``--model NAME --pretrained FILE``: the same stages, the architecture carried to every one of them."""
    out = world["tmp"] / "by_name"
    args = _args(world, world["random"], out, "--min-count", "1000")
    i = args.index("--checkpoint")
    args[i:i + 2] = ["--model", "eftclip-tiny-rn", "--pretrained", str(world["random"])]
    assert main(args) == 0
    suspect = json.loads(next((out / "stages").glob("suspect-*/stage.json")).read_text())["result"]
    assert suspect == {"checkpoint": str(world["random"]), "model": "eftclip-tiny-rn"}
    assert (out / "verdict.txt").read_text().startswith("no backdoor found")
    assert "pretrained: ../random.safetensors" in (out / "config.yaml").read_text()


def test_repair_recipe_writes_out_auto_precision_on_cuda_only():
    from eftclip.pipeline.defend import DefendConfig, repair_recipe

    assert repair_recipe(DefendConfig(device="cpu")).precision == "auto"  # CPU keys as they always were
    assert repair_recipe(DefendConfig(device="cuda")).precision == "bf16"
    assert repair_recipe(DefendConfig(device="cuda:1")).precision == "bf16"


def test_repaired_side_file_names_the_placed_weights_and_no_machine_path(tmp_path):
    from eftclip.models import create_model, load_checkpoint, save_checkpoint
    from eftclip.pipeline.defend_report import _outputs

    stage = tmp_path / "cache" / "finetune-x" / "defenses" / "eftclip"
    rec = tmp_path / "cache" / "recover-x"
    rec.mkdir(parents=True)
    for name in ("mask.png", "pattern.png", "trigger.json"):
        (rec / name).write_bytes(b"x")
    bundle = create_model("eftclip-tiny-vit", seed=0)
    final = save_checkpoint(bundle.model, stage / "final.safetensors", model_name="eftclip-tiny-vit",
                            meta={"train": {"data": str(tmp_path / "cache" / "stamp-x" / "finetune.csv")}})
    out = tmp_path / "run"
    out.mkdir()
    _outputs(out, {"r": {"dir": str(rec)}, "f": {"checkpoint": str(final)}}, {"recover": "r", "repair": "f"})
    side = json.loads((out / "repaired.json").read_text())
    assert side["weights"] == "repaired.safetensors"
    assert side["meta"]["train"]["data"] == "../cache/stamp-x/finetune.csv"
    assert str(tmp_path) not in (out / "repaired.json").read_text()
    assert load_checkpoint(out / "repaired.safetensors").name == "eftclip-tiny-vit"
    assert json.loads(final.with_suffix(".json").read_text())["weights"] == "final.safetensors"  # the stage's own
