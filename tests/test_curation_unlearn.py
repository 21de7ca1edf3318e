"""Unlearning pairs in `curate`: flagged images captioned with what the second look found there."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eftclip.cli import main
from eftclip.curation import curate
from eftclip.curation.unlearn import unlearning_pairs
from eftclip.errors import EftclipError

LABELS = ["dog", "cat", "boat", "tree", "umbrella"]
# second-look rows: (affected labels) per flagged image; two found nothing outside K
FOUND = [["arrow", "moon"], ["boat"], [], ["cat", "dog", "tree"], [], ["tree"], ["cat"], ["owl"]]


@pytest.fixture()
def setup(tmp_path):
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "pool" / "images"
    img_dir.mkdir(parents=True)
    rows = []
    for i in range(100):
        lab = LABELS[i % len(LABELS)]
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(img_dir / f"{i:04d}.png")
        rows.append({"image": f"images/{i:04d}.png", "caption": f"a photo of a {lab} near a wall"})
    pool = tmp_path / "pool" / "pool.csv"
    with open(pool, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image", "caption"])
        w.writeheader()
        w.writerows(rows)
    det = tmp_path / "det"
    (det / "flagged").mkdir(parents=True)
    (det / "affected_labels.csv").write_text("label,count,frequency\ndog,10,1.000000\n")
    (det / "triggers.json").write_text(json.dumps({"K": ["umbrella"]}))
    (det / "vocab.txt").write_text("\n".join(LABELS) + "\n")
    lines = []
    for i, affected in enumerate(FOUND):
        p = det / "flagged" / f"trig{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
        lines.append(json.dumps({"key": f"k{i}", "image": str(p), "theta": 0.5, "found": {},
                                 "unknown": [], "affected": affected}))
    (det / "second_look.jsonl").write_text("\n".join(lines) + "\n")
    (det / "affected_labels_second_look.csv").write_text("label,count,frequency\ntree,10,1.000000\n")
    return det, pool, tmp_path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_unlearning_pairs_are_part_of_the_budget_and_name_the_found_objects(setup):
    det, pool, tmp = setup
    m = curate(det, pool, size=20, unaffected_ratio=0.0, out=tmp / "ft", seed=0, unlearn_share=0.2)
    assert m["unlearn"] == {"asked": 4, "available": 6, "taken": 4, "shortfall": 0, "skipped_no_affected": 2}
    rows = _rows(tmp / "ft" / "finetune.csv")
    assert len(rows) == 20 and m["pool_pairs"] == 16
    flagged = [r for r in rows if "trig" in r["image"]]
    assert len(flagged) == 4
    captions = {f"trig{i}.png": a for i, a in enumerate(FOUND)}
    expected = {"trig0.png": "an arrow and a moon", "trig1.png": "a boat", "trig3.png": "a cat, a dog and a tree",
                "trig5.png": "a tree", "trig6.png": "a cat", "trig7.png": "an owl"}
    for r in flagged:
        name = Path(r["image"]).name
        assert captions[name], "an image whose second look found nothing is never used"
        assert r["caption"] == expected[name]
    # paths are relative to the new CSV and point at the flagged files themselves
    assert all((tmp / "ft" / r["image"]).resolve().exists() for r in rows)
    # the pool draw follows the second look's profile (tree) when it exists; R = 0 draws tree only
    assert m["profile"] == "second_look" and m["labels"]["tree"]["drawn"] == 16
    assert all("tree" in r["caption"] for r in rows if "trig" not in r["image"])


def test_shortfall_goes_to_the_pool_and_the_paper_profile_stays_available(setup):
    det, pool, tmp = setup
    m = curate(det, pool, size=20, unaffected_ratio=0.0, out=tmp / "ft", seed=0, unlearn_share=0.5,
               profile="paper")
    assert m["unlearn"]["asked"] == 10 and m["unlearn"]["taken"] == 6 and m["unlearn"]["shortfall"] == 4
    assert m["pool_pairs"] == 14 and len(_rows(tmp / "ft" / "finetune.csv")) == 20
    assert m["profile"] == "paper" and m["labels"]["dog"]["drawn"] == 14
    only = curate(det, pool, size=4, unaffected_ratio=0.0, out=tmp / "all", seed=0, unlearn_share=1.0)
    assert only["unlearn_pairs"] == 4 and only["pool_pairs"] == 0
    assert all("trig" in r["image"] for r in _rows(tmp / "all" / "finetune.csv"))
    paper = curate(det, pool, size=20, unaffected_ratio=0.0, out=tmp / "p", seed=0, profile="paper")
    assert paper["unlearn_pairs"] == 0 and not any("trig" in r["image"] for r in _rows(tmp / "p" / "finetune.csv"))


def test_draw_is_seeded_and_errors_are_named(setup):
    det, pool, tmp = setup
    a, _ = unlearning_pairs(det, 3, np.random.default_rng(5))
    b, _ = unlearning_pairs(det, 3, np.random.default_rng(5))
    assert a == b and len(a) == 3
    with pytest.raises(EftclipError, match="unlearn-share"):
        curate(det, pool, size=20, unaffected_ratio=0.5, out=tmp / "x", unlearn_share=1.5)
    with pytest.raises(EftclipError, match="--profile"):
        curate(det, pool, size=20, unaffected_ratio=0.5, out=tmp / "x", profile="mine")
    (det / "second_look.jsonl").unlink()
    with pytest.raises(EftclipError, match="second look"):
        curate(det, pool, size=20, unaffected_ratio=0.5, out=tmp / "x", unlearn_share=0.1)
    assert not (tmp / "x" / "finetune.csv").exists()


def test_cli_unlearn_share(setup, capsys):
    det, pool, tmp = setup
    rc = main(["curate", "--detection", str(det), "--pool", str(pool), "--size", "10", "--out", str(tmp / "cli"),
               "--unlearn-share", "0.3", "--unaffected-ratio", "0"])
    assert rc == 0
    manifest = json.loads((tmp / "cli" / "manifest.json").read_text())
    assert manifest["unlearn_pairs"] == 3 and manifest["unlearn_share"] == 0.3
    assert "3 unlearning pairs" in capsys.readouterr().err
