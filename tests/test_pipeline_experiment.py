"""The one experiment pipeline end to end (``eftclip demo`` and ``eftclip study`` are presets of it).

* a 2-attack x 2-seed matrix on the tiny world: every cell, the summary in its schema, a rerun
  that recomputes nothing, the clean model trained once per seed;
* a run killed inside a stage continues to the same numbers;
* the ``--quick`` demo: the direction of every effect;
* every attack and other targets run through (mechanics);
* bad configs are refused, naming the key, before anything is written.
"""

from __future__ import annotations

import json

import pytest

import eftclip.training as training
from eftclip.cli import main
from eftclip.errors import EftclipError
from eftclip.pipeline.experiment import run_experiment
from eftclip.pipeline.presets import config_from_mapping, load_experiment

TINY = {
    "name": "tiny",
    "source": {"kind": "world", "size": "tiny", "oracle_epochs": 2},
    "seeds": [0],
    "attacks": ["badnet"],
    "poison_rate": 0.1,
    "pretrain": {"epochs": 2, "batch_size": 32, "lr": 0.005, "warmup": 2},
    "detect": {"scenes": 24},
    "budget": 12,
    "finetune": {"epochs": 1, "batch_size": 8, "warmup": 1},
    "device": "cpu",
    "workers": 1,  # in-process, so that a monkeypatched training.train is the one that runs
    "progress": False,
}


def _cfg(tmp_path, name: str, **changes):
    return config_from_mapping({**TINY, "out": str(tmp_path / name), **changes})


def _numbers(metrics: dict) -> list[dict]:
    """What must not depend on interruptions or on how stages were scheduled (times left out)."""
    keep = []
    for m in metrics["cells"]:
        cell = {k: m[k] for k in ("attack", "target", "seed", "clean", "poisoned", "detection")}
        cell["defenses"] = {n: {k: v for k, v in d.items() if k != "seconds"} for n, d in m["defenses"].items()}
        keep.append(cell)
    return keep


def test_matrix_of_two_attacks_and_two_seeds_end_to_end(tmp_path, capsys):
    cfg = _cfg(tmp_path, "matrix", seeds=[0, 1], attacks=["badnet", "blended"], workers=2)
    m = run_experiment(cfg)
    cells = {(c["attack"]["name"], c["seed"]) for c in m["cells"]}
    assert cells == {("badnet", 0), ("badnet", 1), ("blended", 0), ("blended", 1)}
    summary = json.loads((tmp_path / "matrix" / "summary.json").read_text())
    for name in ("eftclip", "eftclip_paper", "cleanclip", "cleanclip_large"):
        for attack in ("badnet", "blended"):
            row = summary["defenses"][name][attack]
            assert set(row) >= {"ca", "asr", "pairs"} and row["ca"]["n"] == 2
            assert set(row["asr"]) >= {"mean", "sd", "ci95", "n"}
    assert set(summary["paired"]) == {f"{a}-vs-{b}" for a in ("eftclip", "eftclip_paper")
                                      for b in ("cleanclip", "cleanclip_large")}
    # the second look was scored against the world's truth (which the defense never reads)
    blocks = m["cells"][0]["detection"]["profile_vs_truth"]
    assert set(blocks) == {"paper", "second_look"} and "tv_distance" in blocks["second_look"]
    assert summary["poisoned"]["badnet"]["asr"]["n"] == 2 and summary["clean"]["ca"]["n"] == 2
    # the hand computation: the summary is the mean and t-interval of the cells' own numbers
    asr = [c["defenses"]["cleanclip"]["asr"] for c in m["cells"] if c["attack"]["name"] == "badnet"]
    assert summary["defenses"]["cleanclip"]["badnet"]["asr"]["mean"] == pytest.approx(sum(asr) / 2)
    for name in ("report.md", "metrics.json", "tables/summary.csv", "tables/paired.md", "figures/matrix.png",
                 "cells/s0-badnet/report.md", "cells/s1-blended/figures/ca_asr.png"):
        assert (tmp_path / "matrix" / name).exists(), name
    # EDA's text views read the shipped synonym table, whatever this machine has installed
    summaries = [json.loads(f.read_text())["result"]["summary"] for f in (tmp_path / "matrix" / "cache").glob("finetune-*/stage.json")]
    assert {s["eda_synonyms"] for s in summaries} == {"table", None}  # None: the clip objective has no EDA
    # one clean model per seed, shared by both attacks
    plan = run_experiment(cfg, plan_only=True)["plan"]
    assert sum(1 for s in plan if s["id"].endswith("train_clean")) == 2
    assert all(s["done"] for s in plan)
    # a rerun recomputes nothing
    capsys.readouterr()
    again = run_experiment(cfg)
    assert _numbers(again) == _numbers(m)
    assert "to run" not in capsys.readouterr().err


def test_interrupted_run_continues_to_the_same_numbers(tmp_path, monkeypatch):
    unbroken = run_experiment(_cfg(tmp_path, "unbroken", workers=2))
    real_train = training.train
    calls = {"n": 0}

    def interrupting_train(cfg, **kw):
        calls["n"] += 1  # the second pre-training is the poisoned one: kill it in its second epoch
        if calls["n"] != 2:
            return real_train(cfg, **kw)

        def kill(step, *args, **kwargs):
            if step >= 5:
                raise KeyboardInterrupt

        return real_train(cfg, on_step_end=kill, **kw)

    monkeypatch.setattr(training, "train", interrupting_train)
    cfg = _cfg(tmp_path, "interrupted")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg)
    cache = tmp_path / "interrupted" / "cache"
    assert len(list(cache.glob("pretrain-*/stage.json"))) == 1, "the kill must land inside the second pre-training"
    assert list(cache.glob("pretrain-*/models/poisoned/checkpoints/*.safetensors")), "an epoch checkpoint exists"
    monkeypatch.setattr(training, "train", real_train)
    resumed = run_experiment(cfg)
    assert _numbers(resumed) == _numbers(unbroken)


def test_quick_demo_effects_point_the_right_way(tmp_path):
    """Not marked slow: the end-to-end effect check CI must run."""
    cfg = load_experiment("demo-quick", out=str(tmp_path / "quick"), device="cpu")
    m = run_experiment(cfg)["cells"][0]
    assert m["poisoned"]["asr"] >= 0.5 and m["poisoned"]["asr"] >= m["clean"]["asr"] + 0.3, m
    assert m["detection"]["target_found"], m["detection"]
    for name, d in m["defenses"].items():
        assert d["asr"] < m["poisoned"]["asr"], (name, m["defenses"])
    # ours removes more of the backdoor than CleanCLIP on a random subset of the same size (direction only)
    assert m["defenses"]["eftclip"]["asr"] < m["defenses"]["cleanclip"]["asr"], m["defenses"]
    # the trigger recovered from the flagged images sits where the true patch is (scored, never read)
    assert m["trigger_recovery"]["iou_with_true_trigger"] >= 0.5, m["trigger_recovery"]
    for part in ("clean", "poisoned"):
        assert 0 <= m[part]["ca"] <= 1 and 0 <= m[part]["asr"] <= 1


@pytest.mark.parametrize("attack,target", [("blended", "star"), ("wanet", "boat"), ("trojannet", "cup"),
                                           ("trojannn", "key")])
def test_every_attack_and_other_targets_run_through(tmp_path, attack, target):
    """Mechanics for each registered attack and non-default targets (tiny models: no effect sizes)."""
    params = {"steps": 3} if attack == "trojannn" else {}
    cfg = _cfg(tmp_path, attack, attacks=[{"name": attack, "params": params}], target=target,
               pretrain={"epochs": 1, "batch_size": 32, "lr": 0.005, "warmup": 2},
               defenses=[{"name": "cleanclip", "set": "random"}])
    m = run_experiment(cfg)["cells"][0]
    assert m["target"] == target and m["attack"]["name"] == attack
    for row in (m["clean"], m["poisoned"], *m["defenses"].values()):
        assert 0 <= row["ca"] <= 1 and 0 <= row["asr"] <= 1, row
    manifest = next((tmp_path / attack / "cache").glob("poison-*/poisoned/train/manifest.json"))
    assert json.loads(manifest.read_text())["target"] == target
    if attack == "trojannn":  # the attacker optimises on its own training scenes, never the eval (test) split
        from eftclip.data.captions import read_captions
        from eftclip.pipeline.sources import build_source
        from eftclip.world import world_paths

        splits = world_paths(next((tmp_path / attack / "cache").glob("data-*/world")))
        images = build_source({"kind": "world"}).surrogate_images(splits)
        assert images and not any(i.startswith(str(splits["eval"])) for i in images)
        assert set(images) == {r.image for r in read_captions(splits["train_csv"]).records}


@pytest.mark.parametrize("change,message", [
    ({"attacks": ["nope"]}, "unknown attack 'nope'"),
    ({"target": "zebra"}, "'zebra' is not a category"),
    ({"workers": 0}, "workers must be >= 1"),
    ({"source": {"kind": "world", "poison_scenes": "many"}}, "source.poison_scenes: unknown 'many'"),
    ({"pretrain": {"epochs": 1.5}}, "pretrain.epochs: expected int"),
    ({"finetune": {"lr": "fast"}}, "finetune.lr: expected float"),
    ({"detect": {"theta": "high"}}, "detect.theta: expected float"),
    ({"budget": 999}, "exceed the clean pool"),
    ({"attacks": [{"name": "badnet", "params": {"size": 99}}]}, "badnet: bad parameters"),
    ({"defenses": [{"name": "x", "set": "magic"}]}, "unknown set 'magic'"),
    ({"seeds": [0, 0]}, "each seed may appear once"),
])
def test_bad_configs_are_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(EftclipError, match=message):
        run_experiment(_cfg(tmp_path, "bad", **change))
    assert not (tmp_path / "bad").exists()


def test_demo_cli_refuses_another_runs_folder_and_prints_the_plan(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"kind": "experiment", "config": {"seeds": [99]}}))
    assert main(["demo", "--out", str(out), "--quick"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "plan"), "--plan"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {s["id"] for s in lines} >= {"s0/train_clean", "s0/badnet/train_poisoned", "s0/badnet/detect"}
    assert not (tmp_path / "plan").exists(), "--plan runs nothing"


def test_a_cell_whose_detection_finds_nothing_goes_on_without_a_trigger(tmp_path):
    """K empty (a legitimate detection outcome): nothing is recovered, nothing stamped, no IoU, no crash."""
    from eftclip.data.captions import read_captions, write_captions_csv
    from eftclip.pipeline.tasks import TASKS

    detection = tmp_path / "detection"
    detection.mkdir()
    (detection / "metrics.json").write_text(json.dumps({"K": []}))
    recovered = TASKS["recover_cell_trigger"](tmp_path / "recover", {"seed": 0, "method": "auto"},
                                              {"detection": {"dir": str(detection)}, "model": {}, "data": {}}, {})
    assert recovered["dir"] is None and recovered["summary"]["reason"] == "K is empty"
    assert TASKS["cell_trigger_iou"](tmp_path / "iou", {"images": 4, "seed": 0},
                                     {"recovered": recovered}, {})["iou"] is None
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    write_captions_csv(tmp_path / "set.csv", [{"image": str(image), "caption": f"a cup {i}"} for i in range(5)],
                       ["image", "caption"])
    out = TASKS["stamp_set"](tmp_path / "stamp", {"share": 0.4, "seed": 0},
                             {"set": {"csv": str(tmp_path / "set.csv")}, "recovered": recovered}, {})
    assert out["stamped"] == 0
    rows = read_captions(out["csv"]).records
    assert [r.caption for r in rows] == [f"a cup {i}" for i in range(5)]


def test_a_bad_config_file_is_named_in_the_error_and_nothing_is_written(tmp_path, capsys):
    bad = tmp_path / "mine.yaml"
    bad.write_text("source: {kind: world, size: tiny}\nseeds: [0]\nattacks: [badnet]\n"
                   "defenses:\n  - {name: a, set: magic}\n")
    assert main(["study", "--config", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert f"{bad}: defenses: a: unknown set 'magic'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_recipe_key_fields_leave_out_only_the_legacy_defaults():
    from eftclip.pipeline.recipes import FinetuneRecipe, key_fields

    table, wordnet = FinetuneRecipe(), FinetuneRecipe(eda_synonyms="wordnet")
    assert "eda_synonyms" not in key_fields(table) and key_fields(wordnet)["eda_synonyms"] == "wordnet"
    assert "channels_last" not in key_fields(table)
    assert key_fields(FinetuneRecipe(channels_last=True))["channels_last"] is True
    assert "workers" not in key_fields(table) and key_fields(table)["lr"] == table.lr


def test_a_source_whose_settings_hold_a_recipe_keeps_its_keys_when_recipes_gain_a_field(tmp_path):
    """The folder oracle's labeller recipe is hashed inside the source's settings: a field added to
    PretrainRecipe since (channels_last) must not re-key every stage of a CIFAR-10 study."""
    from eftclip.pipeline.sources import FolderOracleSpec, build_source, source_mapping

    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
    mapping = source_mapping(build_source({"kind": "folder", "root": str(tmp_path)}))
    assert "channels_last" not in mapping["oracle"]["labeller"]
    assert mapping["oracle"]["labeller"]["model"] == FolderOracleSpec().labeller.model


def test_precision_auto_keys_gpu_stages_apart_from_cpu_ones(tmp_path, monkeypatch):
    """auto is bf16 on CUDA and fp32 on CPU: a shared cache must not hand a CPU-made stage to a GPU run."""
    import torch

    cpu = {s["id"]: s for s in run_experiment(_cfg(tmp_path, "p", device="cpu"), plan_only=True)["plan"]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = {s["id"]: s for s in run_experiment(_cfg(tmp_path, "p", device="auto"), plan_only=True)["plan"]}
    assert cpu["s0/train_clean"]["params"]["recipe"]["precision"] == "auto"
    assert gpu["s0/train_clean"]["params"]["recipe"]["precision"] == "bf16"
    assert cpu["s0/train_clean"]["key"] != gpu["s0/train_clean"]["key"]
    assert cpu["s0/data"]["key"] == gpu["s0/data"]["key"]


def test_a_recipes_precision_and_memory_order_reach_the_training_run(tmp_path, monkeypatch):
    """The recipe's precision was keyed but never passed on: a CPU 'bf16' stage trained in fp32."""
    from eftclip.pipeline import steps
    from eftclip.pipeline.recipes import FinetuneRecipe, PretrainRecipe

    seen = []
    monkeypatch.setattr(steps, "_train", lambda ctx, cfg, verb: seen.append(cfg) or {})
    ctx = steps.Context(out=tmp_path, seed=0, device="cpu", templates=[], target="", progress=False)
    steps.pretrain(ctx, "m", "pairs.csv", PretrainRecipe(precision="bf16", channels_last=True))
    steps.finetune(ctx, "d", "m.safetensors", "set.csv", FinetuneRecipe(precision="fp32", channels_last=True),
                   subset=10)
    assert [(c.precision, c.channels_last) for c in seen] == [("bf16", True), ("fp32", True)]
