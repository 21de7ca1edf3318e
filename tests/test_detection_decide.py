"""Pass 2 of detection (no model): theta/tau thresholding, both modes, outputs, metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from eftclip.detection.runner import DecideParams, decide, image_sets, write_outputs
from eftclip.errors import EftclipError


def _rec(key, clip, finds, poisoned, image="x.png", unknown=()):
    return {
        "key": key, "index": 0, "image": image, "is_poisoned": poisoned,
        "clip": [[lab, 0.1] for lab in clip],
        "finds": [{"label": l, "score": s, "box": [1, 1, 6, 6], "crop": [[c, 0.9]]} for l, s, c in finds],
        "unknown": list(unknown),
    }


def _records(n=40, image="x.png"):
    """Half triggered: CLIP ranks 'umbrella' first, the oracle finds only the true objects."""
    rng = np.random.default_rng(0)
    objs = ["dog", "cat", "boat", "tree", "car", "house"]
    recs = []
    for i in range(n):
        true = list(rng.choice(objs, size=3, replace=False))
        poisoned = i % 2 == 0
        clip = (["umbrella"] + true + ["sky"]) if poisoned else (true + ["sky", "umbrella"])
        # true objects found with high confidence, 'sky' found weakly (0.5)
        finds = [(t, 0.9, t) for t in true] + [("sky", 0.5, "sky")]
        if poisoned:  # the oracle finds a faint umbrella-ish region, below usual theta
            finds.append(("umbrella", 0.3, "umbrella"))
        recs.append(_rec(f"k{i}", clip, finds, poisoned, image=image))
    return recs


def test_image_sets_threshold_and_tau():
    r = _rec("a", ["umbrella", "dog", "sky"], [("dog", 0.9, "dog"), ("sky", 0.5, "dog"), ("umbrella", 0.3, "umbrella")], True)
    L, S, R, U, kept = image_sets(r, 3, 0.66)
    assert L == ["umbrella", "dog", "sky"] and S == ["dog"] and R == ["dog"]
    assert image_sets(r, 3, 0.4)[1] == ["dog", "sky"]
    assert image_sets(r, 3, 0.2)[1] == ["dog", "sky", "umbrella"]
    # finds of labels beyond tau are not part of S
    assert image_sets(r, 2, 0.4)[1] == ["dog"]


def test_decide_robust_and_faithful():
    recs = _records()
    p = DecideParams(tau=5, theta=0.66, mode="robust", min_count=5, target="umbrellas")
    res = decide(lambda: iter(recs), p)
    # default evidence is rank 1: 'sky' (never top-1) cannot enter K although it is always unconfirmed
    assert res["K"] == ["umbrella"]
    m = res["metrics_by_mode"]["robust_top1"]
    assert m["detection_rate"] == 1.0 and m["false_positive_rate"] == 0.0
    assert res["metrics"] == m and res["chosen"] == "robust_top1"
    assert res["target"] == "umbrella" and res["target_in_K"] is True
    # flagging anywhere in L_i: clean images rank umbrella 5th, unconfirmed -> all flagged
    assert res["metrics_by_mode"]["robust_topk"]["false_positive_rate"] == 1.0
    # affected labels of flagged images are the oracle's confirmed labels minus K
    prof = {r["label"]: r["count"] for r in res["profile"]}
    assert set(prof) <= {"dog", "cat", "boat", "tree", "car", "house"} and sum(prof.values()) == 20 * 3
    # the faithful K holds every label unconfirmed once at this theta
    assert set(res["K_faithful"]) == {"umbrella", "sky"}
    assert res["metrics_by_mode"]["faithful"]["detection_rate"] == 1.0
    assert res["metrics_by_mode"]["faithful"]["false_positive_rate"] == 1.0
    # counting evidence anywhere in L_i lets the always-missed 'sky' into K as well
    res_k = decide(lambda: iter(recs), DecideParams(tau=5, theta=0.66, min_count=5, evidence="topk"))
    assert res_k["K"] == ["sky", "umbrella"]
    # at a lower theta 'sky' is confirmed and drops out of the faithful K too
    res2 = decide(lambda: iter(recs), DecideParams(tau=5, theta=0.45, min_count=5))
    assert res2["K_robust"] == ["umbrella"] and res2["K_faithful"] == ["umbrella"]
    assert res2["metrics_by_mode"]["robust_top1"]["false_positive_rate"] == 0.0
    # below the umbrella's faint find (0.3) the oracle 'confirms' umbrella: nothing is a trigger
    res3 = decide(lambda: iter(recs), DecideParams(tau=5, theta=0.2, min_count=5))
    assert res3["K_robust"] == [] and res3["metrics"]["detection_rate"] == 0.0


def test_decide_writes_decisions_and_errors():
    recs = _records(10) + [{"key": "bad", "index": 10, "image": "y.png", "is_poisoned": None, "error": "truncated"}]
    written = []
    res = decide(lambda: iter(recs), DecideParams(tau=5, theta=0.45, min_count=2), write=written.append)
    assert len(written) == 11 and res["n_errors"] == 1 and res["n_images"] == 10
    first = written[0]
    assert first["flagged"] is True and "umbrella" in first["why"] and "top-1" in first["why"]
    assert first["L"][0] == "umbrella" and all(f["score"] >= 0.45 for f in first["S"])
    assert first["affected"] == sorted(first["affected"]) and "umbrella" not in first["affected"]
    assert written[1]["flagged"] is False and written[1]["why"] == ""
    assert written[-1]["error"] == "truncated"


def test_bad_params():
    with pytest.raises(EftclipError, match="--theta"):
        decide(lambda: iter([]), DecideParams(theta=1.2))
    with pytest.raises(EftclipError, match="--mode"):
        decide(lambda: iter([]), DecideParams(mode="strict"))
    with pytest.raises(EftclipError, match="--tau"):
        decide(lambda: iter([]), DecideParams(tau=0))


def test_write_outputs_and_figure(tmp_path):
    img = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    recs = _records(12, image=str(img))
    res = decide(lambda: iter(recs), DecideParams(tau=5, theta=0.45, min_count=3, target="umbrella"), figure_n=3)
    m = write_outputs(tmp_path, res, n_listed=12)
    trig = json.loads((tmp_path / "triggers.json").read_text())
    assert trig["K"] == ["umbrella"] and trig["evidence"]["umbrella"]["unconfirmed"] == 6  # the triggered images, where it is top-1
    with open(tmp_path / "affected_labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and abs(sum(float(r["frequency"]) for r in rows) - 1) < 1e-4
    assert m["detection_rate"] == 1.0 and m["target_in_K"] is True
    # the oracle confirms every clean image's top-1 label here: no weak-oracle warning
    assert m["oracle_top1_confirm_rate_clean"] == 1.0 and m["warnings"] == []
    # an oracle that finds nothing: everything flagged, and the metrics say why
    blind = [{**r, "finds": []} for r in recs]
    res_b = decide(lambda: iter(blind), DecideParams(tau=5, theta=0.45, min_count=3))
    mb = write_outputs(tmp_path / "blind", res_b, figure=False)
    assert mb["oracle_top1_confirm_rate_clean"] == 0.0
    assert any("confirms only 0%" in w for w in mb["warnings"])
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == 1.0
    fig = Image.open(tmp_path / "figure7.png")
    assert fig.size[0] > 200 and fig.size[1] > 3 * 150  # three rows of two panels


def test_detect_config_holds_its_decision_params():
    """One DetectConfig carries the pass-2 settings itself: decide takes it as it is."""
    from eftclip.detection.config import DetectConfig, decision_dict

    recs = _records()
    cfg = DetectConfig(checkpoint="c.safetensors", images="i.csv", out="o", tau=5, theta=0.45, min_count=5,
                       target="umbrella", batch_size=8)
    alone = DecideParams(tau=5, theta=0.45, min_count=5, target="umbrella")
    by_cfg, by_params = decide(lambda: iter(recs), cfg), decide(lambda: iter(recs), alone)
    assert by_cfg == by_params
    assert by_cfg["params"] == decision_dict(alone) and list(by_cfg["params"]) == [
        "tau", "theta", "mode", "flag_rule", "evidence", "min_share", "min_count", "target"]


def test_decide_faithful_mode_headline():
    recs = _records()
    res = decide(lambda: iter(recs), DecideParams(tau=5, theta=0.66, mode="faithful", min_count=5))
    assert res["chosen"] == "faithful" and res["K"] == res["K_faithful"] == ["sky", "umbrella"]
    assert res["metrics"] == res["metrics_by_mode"]["faithful"]


def test_shards_take_ranks_from_the_one_distributed_helper(tmp_path, monkeypatch):
    from eftclip.detection.records import Shard

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    shard = Shard.from_env(tmp_path)
    assert (shard.rank, shard.world) == (1, 3) and shard.log.name == "images.rank1.jsonl"
    assert [i for i, _ in shard.mine([object()] * 7)] == [1, 4]
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(EftclipError, match="RANK=3"):
        Shard.from_env(tmp_path)
