"""`eftclip demo` end to end.

* a tiny world: interrupt the demo in the middle of a stage, run it again, and get the same
  metrics as an unbroken run with the same seed (mechanics only: models this small learn little);
* the ``--quick`` variant: the direction of every effect (ASR high after poisoning, the target
  found, ASR lower after the defense).
"""

from __future__ import annotations

import json

import pytest

import eftclip.training as training
from eftclip.cli import main
from eftclip.pipeline.demo import DemoConfig, DetectRecipe, FinetuneRecipe, ModelRecipe, quick_config, run_demo

TINY = dict(
    world_size="tiny",
    poison_rate=0.1,
    model=ModelRecipe(epochs=2, batch_size=32, lr=5e-3, warmup=2),
    finetune=FinetuneRecipe(size=16, large_size=24, epochs=1, batch_size=8, warmup=1),
    detect=DetectRecipe(scenes=24, oracle_epochs=2),
    device="cpu",
    workers=1,  # in-process, so that a monkeypatched training.train is the one that runs
)


def _numbers(metrics: dict) -> dict:
    """The metrics that must not depend on interruptions (times are left out)."""
    keep = {k: metrics[k] for k in ("attack", "target", "seed", "clean", "poisoned", "detection")}
    keep["defenses"] = {name: {k: v for k, v in d.items() if k != "seconds"}
                        for name, d in metrics["defenses"].items()}
    return keep


def test_interrupted_demo_continues_to_the_same_metrics(tmp_path, monkeypatch):
    # the unbroken run trains side by side in worker processes; the interrupted one in process:
    # equal metrics also show that the parallel stages compute exactly what the serial ones do
    unbroken = run_demo(DemoConfig(out=str(tmp_path / "unbroken"), **{**TINY, "workers": 2}))
    assert "wall_seconds" in json.loads((tmp_path / "unbroken" / "stages" / "train_poisoned.json").read_text())

    real_train = training.train
    calls = {"n": 0}

    def interrupting_train(cfg, **kw):
        # the second pre-training is the poisoned one: kill it in its second epoch
        calls["n"] += 1
        if calls["n"] != 2:
            return real_train(cfg, **kw)

        def kill(step, *args, **kwargs):
            if step >= 5:
                raise KeyboardInterrupt

        return real_train(cfg, on_step_end=kill, **kw)

    monkeypatch.setattr(training, "train", interrupting_train)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_demo(DemoConfig(out=str(out), **TINY))
    assert (out / "stages" / "train_clean.json").exists()
    assert not (out / "stages" / "train_poisoned.json").exists(), "the kill must land inside a stage"
    assert list((out / "models" / "poisoned" / "checkpoints").glob("*.safetensors")), "an epoch checkpoint exists"

    monkeypatch.setattr(training, "train", real_train)
    resumed = run_demo(DemoConfig(out=str(out), **TINY))
    assert _numbers(resumed) == _numbers(unbroken)
    for name in ("report.md", "metrics.json", "figures/ca_asr.png", "tables/results.csv"):
        assert (out / name).exists(), name


def test_demo_refuses_another_runs_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"kind": "demo", "config": {"seed": 99}}))
    assert main(["demo", "--out", str(out), "--quick"]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_quick_demo_effects_point_the_right_way(tmp_path):
    """About 4 minutes on 2 cores (measured: clean CA 0.71 / ASR 0.04, poisoned 0.68 / 0.985,
    target found, EftCLIP ASR 0.75). Not marked slow: it is the end-to-end effect check CI must run."""
    m = run_demo(quick_config(out=str(tmp_path / "quick"), device="cpu"))
    assert m["poisoned"]["asr"] >= 0.5 and m["poisoned"]["asr"] >= m["clean"]["asr"] + 0.3, m
    assert m["detection"]["target_found"], m["detection"]
    assert m["defenses"]["eftclip"]["asr"] < m["poisoned"]["asr"], m["defenses"]
    assert set(m) >= {"attack", "target", "seed", "clean", "poisoned", "detection", "defenses", "seconds"}
    for part in ("clean", "poisoned"):
        assert 0 <= m[part]["ca"] <= 1 and 0 <= m[part]["asr"] <= 1


@pytest.mark.parametrize("attack,target", [("blended", "star"), ("wanet", "boat"), ("trojannet", "cup"),
                                           ("trojannn", "key")])
def test_every_attack_and_other_targets_run_through(tmp_path, attack, target):
    """Mechanics for each registered attack and non-default targets (tiny models: no effect sizes)."""
    m = run_demo(DemoConfig(out=str(tmp_path / attack), attack=attack, target=target,
                            **{**TINY, "model": ModelRecipe(epochs=1, batch_size=32, lr=5e-3, warmup=2),
                               "finetune": FinetuneRecipe(size=16, large_size=0, epochs=1, batch_size=8, warmup=1)}))
    assert m["target"] == target and m["attack"]["name"] == attack
    for part in ("clean", "poisoned", *m["defenses"]):
        row = m[part] if part in m else m["defenses"][part]
        assert 0 <= row["ca"] <= 1 and 0 <= row["asr"] <= 1, (part, row)
    manifest = json.loads((tmp_path / attack / "poisoned" / "train" / "manifest.json").read_text())
    assert manifest["target"] == target
    if attack == "trojannn":
        assert (tmp_path / attack / "trigger" / "trojannn_pattern.png").exists()
