"""profile_vs_truth on a hand-made case, and the truth loader of an ImageFolder-derived detection set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from eftclip.detection.profile_truth import (
    affected_by_image,
    profile_vs_truth,
    score_detection,
    truth_from_label_column,
    tv_distance,
)
from eftclip.errors import EftclipError

AFFECTED = {"a": ["arrow", "moon"], "b": ["arrow"], "c": ["car"], "d": []}  # flagged images only
OBJECTS = {"a": ["arrow", "moon", "umbrella"], "b": ["arrow", "car"], "c": ["car"], "d": ["star"], "e": ["key"]}
TRIGGERED = {"a": True, "b": True, "c": False, "d": True, "e": True}


def test_profile_vs_truth_hand_made():
    r = profile_vs_truth(AFFECTED, OBJECTS, TRIGGERED, K=["umbrella"])
    # flagged and triggered: a, b, d (c is clean, e was not flagged)
    assert r["n_images"] == 3 and r["n_without_affected"] == 1 and r["n_without_truth"] == 0
    # profile: arrow 2, moon 1 -> 2/3, 1/3; truth minus K: arrow 2, moon 1, car 1, star 1 -> .4, .2, .2, .2
    assert r["profile"] == pytest.approx({"arrow": 2 / 3, "moon": 1 / 3})
    assert r["truth"] == pytest.approx({"arrow": 0.4, "car": 0.2, "moon": 0.2, "star": 0.2})
    # 0.5 * (|2/3 - .4| + |1/3 - .2| + .2 + .2) = 0.5 * 0.8
    assert r["tv_distance"] == pytest.approx(0.4)
    # recall per image: a 2/2 (umbrella is K, not counted), b 1/2, d 0/1
    assert r["object_recall"] == pytest.approx(0.5)
    # precision over images with affected labels: a 2/2, b 1/1
    assert r["object_precision"] == pytest.approx(1.0)


def test_perfect_and_empty_profiles():
    same = profile_vs_truth({"a": ["moon"], "b": ["car"]}, {"a": ["moon"], "b": ["car", "umbrella"]},
                            {"a": True, "b": True}, K={"umbrella"})
    assert same["tv_distance"] == 0.0 and same["object_recall"] == 1.0
    none = profile_vs_truth({"a": []}, {"a": ["moon"]}, {"a": True}, K=())
    assert none["tv_distance"] is None and none["object_recall"] == 0.0 and none["object_precision"] is None
    assert tv_distance({"x": 1.0}, {"y": 1.0}) == 1.0
    nothing = profile_vs_truth({"a": ["moon"]}, {"a": ["moon"]}, {"a": None}, K=())
    assert nothing["n_images"] == 0 and nothing["object_recall"] is None


def test_truth_from_label_column_and_scoring_a_folder(tmp_path):
    img_dir = tmp_path / "set" / "images"
    img_dir.mkdir(parents=True)
    rows = []
    for i, (label, poisoned) in enumerate([("cat", 1), ("dog", 1), ("ship", 0)]):
        Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(img_dir / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "caption": f"a photo of a {label}", "is_poisoned": poisoned,
                     "label": label})
    csv_path = tmp_path / "set" / "data.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image", "caption", "is_poisoned", "label"])
        w.writeheader()
        w.writerows(rows)
    objects, triggered = truth_from_label_column(csv_path)
    refs = sorted(objects)
    assert [objects[r] for r in refs] == [{"cat"}, {"dog"}, {"ship"}]
    assert [triggered[r] for r in refs] == [True, True, False]

    det = tmp_path / "det"
    det.mkdir()
    (det / "metrics.json").write_text(json.dumps({"K": ["airplane"]}))
    lines = [{"key": str(i), "image": ref, "is_poisoned": None, "flagged": i < 2,
              "affected": [["cat"], ["cat"], None][i]} for i, ref in enumerate(refs)]
    (det / "images.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(EftclipError, match="second_look"):
        affected_by_image(det, "second_look")
    scored = score_detection(det, objects, triggered)
    assert set(scored) == {"paper"}  # no second look in the folder: only the paper's rule is scored
    # profile {cat: 1}; truth {cat: .5, dog: .5} -> distance .5; recall (1 + 0) / 2
    assert scored["paper"]["tv_distance"] == pytest.approx(0.5)
    assert scored["paper"]["object_recall"] == pytest.approx(0.5)
    assert json.loads((det / "profile_vs_truth.json").read_text()) == scored


def test_a_labelled_folders_detection_set_keeps_its_label_column_for_scoring(tmp_path):
    """The study's detection set of a labelled folder (CIFAR-10) carries 'label' through poisoning,
    so the folder's truth can score the flagged images (it was dropped, and the study stopped)."""
    from eftclip.pipeline.steps import Context, detection_set

    img_dir = tmp_path / "split"
    img_dir.mkdir()
    rows = []
    for i, label in enumerate(["cat", "dog", "ship", "cat", "dog", "ship"]):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(img_dir / f"{i}.png")
        rows.append({"image": f"split/{i}.png", "caption": f"a photo of a {label}.", "label": label})
    detect_csv = tmp_path / "detect.csv"
    with open(detect_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image", "caption", "label"])
        w.writeheader()
        w.writerows(rows)
    ctx = Context(out=tmp_path / "out", seed=0, device="cpu", templates=["a photo of a {}."], target="airplane",
                  world={"detect_csv": str(detect_csv)}, progress=False)
    trig = {"name": "badnet", "params": {"size": 4, "position": "bottom-right"}}
    made = detection_set(ctx, trig, scenes=6, share=0.5)
    objects, triggered = truth_from_label_column(made["csv"])
    assert sorted(sorted(v)[0] for v in objects.values()) == ["cat", "cat", "dog", "dog", "ship", "ship"]
    assert sum(bool(t) for t in triggered.values()) == 3
