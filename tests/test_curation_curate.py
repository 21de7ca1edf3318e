"""`curate` end to end on a small real pool CSV and a detection folder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from eftclip.curation import curate
from eftclip.errors import EftclipError

LABELS = ["dog", "cat", "boat", "tree", "umbrella"]


@pytest.fixture()
def setup(tmp_path):
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "pool" / "images"
    img_dir.mkdir(parents=True)
    rows = []
    for i in range(200):
        lab = LABELS[i % len(LABELS)]
        p = img_dir / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
        noun = lab + "s" if i % 3 == 0 else lab  # plurals must match too
        rows.append({"image": f"images/{p.name}", "caption": f"a photo of two {noun} near a wall"})
    pool = tmp_path / "pool" / "pool.csv"
    with open(pool, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image", "caption"])
        w.writeheader()
        w.writerows(rows)
    det = tmp_path / "det"
    det.mkdir()
    (det / "affected_labels.csv").write_text("label,count,frequency\ndog,30,0.6\ncat,15,0.3\nboat,5,0.1\n")
    (det / "triggers.json").write_text(json.dumps({"K": ["umbrella"]}))
    (det / "vocab.txt").write_text("\n".join(LABELS) + "\n")
    return det, pool, tmp_path


def test_curate_follows_profile(setup):
    det, pool, tmp = setup
    m = curate(det, pool, size=60, unaffected_ratio=0.5, out=tmp / "ft", seed=3)
    labs = m["labels"]
    # quotas 60 * w / 1.1 with w = 0.6, 0.3, 0.1, 0.05, 0.05, largest remainder: 33, 16, 5, 3, 3
    assert labs["dog"]["drawn"] == 33 and labs["cat"]["drawn"] == 16 and labs["boat"]["drawn"] == 5
    assert labs["dog"]["drawn"] > labs["cat"]["drawn"] > labs["boat"]["drawn"] > labs["tree"]["drawn"]
    # unaffected labels (tree, and the trigger umbrella) get R x the least frequent affected share
    assert labs["tree"]["drawn"] == labs["umbrella"]["drawn"] == 3
    assert m["fill"]["drawn"] == 0 and m["shortfalls"] == {}
    with open(tmp / "ft" / "finetune.csv", newline="") as fh:
        out_rows = list(csv.DictReader(fh))
    assert len(out_rows) == 60
    assert sum("dog" in r["caption"] for r in out_rows) == 33
    # image paths are written relative to the new CSV and point at real files
    assert all((tmp / "ft" / r["image"]).resolve().exists() for r in out_rows)
    assert json.loads((tmp / "ft" / "manifest.json").read_text())["size"] == 60
    assert (tmp / "ft" / "config.yaml").exists()
    again = curate(det, pool, size=60, unaffected_ratio=0.5, out=tmp / "ft2", seed=3)
    assert again["keys"] == m["keys"]


def test_curate_shortfall_redistributed(setup):
    det, pool, tmp = setup
    # 40 dog captions exist; asking 150 with dog at 60% cannot be met
    m = curate(det, pool, size=150, unaffected_ratio=0.5, out=tmp / "ft", seed=0)
    assert m["labels"]["dog"]["drawn"] == 40 and m["shortfalls"]["dog"] > 0
    assert sum(v["drawn"] for v in m["labels"].values()) + m["fill"]["drawn"] == 150


def test_curate_errors(setup):
    det, pool, tmp = setup
    with pytest.raises(EftclipError, match="larger than the pool"):
        curate(det, pool, size=201, unaffected_ratio=0.5, out=tmp / "x")
    with pytest.raises(EftclipError, match="unaffected-ratio"):
        curate(det, pool, size=10, unaffected_ratio=2.0, out=tmp / "x")
    with pytest.raises(EftclipError, match="clip-checkpoint"):
        curate(det, pool, size=10, unaffected_ratio=0.5, out=tmp / "x", label_by="clip")
    with pytest.raises(EftclipError, match="detection folder not found"):
        curate(tmp / "nope", pool, size=10, unaffected_ratio=0.5, out=tmp / "x")
    assert not (tmp / "x" / "finetune.csv").exists()


def test_repair_share_takes_flagged_images_with_the_oracles_labels(setup):
    det, pool, tmp = setup
    rng = np.random.default_rng(1)
    lines = []
    for i in range(12):
        p = tmp / f"trig{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
        flagged = i % 3 != 0  # 8 flagged, of which those with affected labels qualify
        affected = ["boat"] if i % 2 else []
        lines.append(json.dumps({"key": str(i), "image": str(p), "flagged": flagged, "affected": affected}))
    (det / "images.jsonl").write_text("\n".join(lines) + "\n")
    m = curate(det, pool, size=40, unaffected_ratio=0.5, out=tmp / "rep", seed=0, repair_share=0.25)
    qualifying = sum(1 for i in range(12) if i % 3 != 0 and i % 2)  # flagged and with a confirmed object
    assert m["repair_pairs"] == min(10, qualifying) == 4
    with open(tmp / "rep" / "finetune.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40, "the repair pairs are part of the budget, not added to it"
    repaired = [r for r in rows if "trig" in r["image"]]
    assert len(repaired) == 4 and all("boat" in r["caption"] and "umbrella" not in r["caption"] for r in repaired)
    with pytest.raises(EftclipError, match="repair-share"):
        curate(det, pool, size=40, unaffected_ratio=0.5, out=tmp / "bad", repair_share=1.5)


def test_repair_captions_are_borrowed_from_the_pool_when_it_names_the_same_labels(tmp_path):
    from eftclip.curation.curate import repair_pairs

    lines = [json.dumps({"image": f"img{i}.png", "flagged": True, "affected": labs})
             for i, labs in enumerate([["boat"], ["arrow", "car"], ["owl"]])]
    (tmp_path / "images.jsonl").write_text("\n".join(lines) + "\n")
    pool = {frozenset(["boat"]): ["a red boat on the sand"], frozenset(["car", "arrow"]): ["a car near an arrow"]}
    rows = repair_pairs(tmp_path, 3, np.random.default_rng(0), pool_captions=pool)
    captions = {r["image"]: r["caption"] for r in rows}
    assert captions["img0.png"] == "a red boat on the sand"
    assert captions["img1.png"] == "a car near an arrow"
    assert captions["img2.png"].endswith("of an owl.")  # no pool caption names exactly {owl}: a template
