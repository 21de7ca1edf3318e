"""The synthetic world: determinism, layout, formats, consistency of captions/boxes/masks with pixels."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eftclip.errors import EftclipError
from eftclip.world import DEFAULT_CATEGORIES, SHAPES, WorldSize, rle_decode, rle_encode, synth, world_paths
from eftclip.world.categories import rasterize
from eftclip.world.captions import caption_for
from eftclip.world.render import PALETTE, render_scene

TINY = WorldSize(train=60, pool=12, detect=8, reference_per_class=4, eval_per_class=3)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("w") / "world"
    synth(root, seed=3, size=TINY)
    return root


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    synth(again, seed=3, size=TINY)
    assert _digest(world) == _digest(again)
    other = tmp_path / "other"
    synth(other, seed=4, size=TINY)
    d_other = _digest(other)
    assert set(d_other) == set(_digest(world))  # same layout
    differing = [k for k in d_other if d_other[k] != _digest(world)[k] and k.endswith(".png")]
    assert len(differing) > 0.9 * sum(k.endswith(".png") for k in d_other)


def test_layout_counts_and_formats(world):
    paths = world_paths(world)
    info = json.loads(Path(paths["world"]).read_text())
    assert info["seed"] == 3 and info["image_size"] == 32 and info["generator_version"]
    classnames = json.loads(Path(paths["classnames"]).read_text())
    assert classnames == list(DEFAULT_CATEGORIES) and len(classnames) >= 12 and "umbrella" in classnames
    for split, n in (("train", TINY.train), ("pool", TINY.pool), ("detect", TINY.detect)):
        with open(paths[f"{split}_csv"], newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == n
        assert list(rows[0]) == ["image", "caption"]
        meta = [json.loads(l) for l in open(paths[f"{split}_meta"])]
        assert [m["image"] for m in meta] == [r["image"] for r in rows]
        for r in rows:
            im = Image.open(Path(paths[f"{split}_csv"]).parent / r["image"])
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
    # eval: an ImageFolder with one folder per category
    ev = Path(paths["eval"])
    assert sorted(p.name for p in ev.iterdir()) == sorted(classnames)
    assert all(len(list((ev / c).glob("*.png"))) == TINY.eval_per_class for c in classnames)
    ref = Path(paths["reference"])
    assert sorted(p.name for p in ref.iterdir() if p.is_dir()) == sorted(classnames + ["background"])
    assert all(len(list((ref / c).glob("*.png"))) == TINY.reference_per_class for c in classnames)


def test_captions_readable_by_the_data_module(world):
    captions = pytest.importorskip("eftclip.data.captions")
    table = captions.read_captions(world_paths(world)["train_csv"])
    assert len(table.records) == TINY.train and not table.skipped
    assert Path(table.records[0].image).is_file()


def test_meta_consistent_with_pixels_and_captions(world):
    paths = world_paths(world)
    meta = [json.loads(l) for l in open(paths["train_meta"])]
    seen = set()
    n_objects = []
    for m in meta:
        img = np.asarray(Image.open(Path(paths["train_csv"]).parent / m["image"]).convert("RGB"))
        n_objects.append(len(m["objects"]))
        taken = np.zeros(img.shape[:2], bool)
        for o in m["objects"]:
            seen.add(o["category"])
            assert o["category"] in m["caption"]  # captions name every object
            mask = rle_decode(o["mask_rle"])
            assert mask.shape == img.shape[:2] and mask.any()
            assert not (mask & taken).any()  # visible masks do not overlap
            taken |= mask
            # the mask's pixels are painted in the object's flat colour
            assert (img[mask] == np.array(o["rgb"], np.uint8)).all()
            ys, xs = np.nonzero(mask)
            assert o["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert o["colour"] in PALETTE
        if m["objects"]:
            # background pixels are not one flat colour
            assert len(np.unique(img[~taken].reshape(-1, 3), axis=0)) > 0.5 * (~taken).sum()
    assert set(n_objects) == {1, 2, 3}
    assert seen == set(DEFAULT_CATEGORIES)


def test_labels_are_not_colours(world):
    # every colour appears on several categories: colour cannot stand in for shape
    paths = world_paths(world)
    by_colour: dict[str, set] = {}
    for m in (json.loads(l) for l in open(paths["train_meta"])):
        for o in m["objects"]:
            by_colour.setdefault(o["colour"], set()).add(o["category"])
    assert len(by_colour) >= 8
    assert all(len(cats) >= 3 for cats in by_colour.values())


def test_shapes_are_distinct_silhouettes():
    masks = {n: rasterize(n, 24) for n in SHAPES}
    names = list(masks)
    for i, a in enumerate(names):
        assert masks[a].mean() > 0.12, a  # visible at 24 px
        for b in names[i + 1 :]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.75, (a, b, iou)


def test_caption_templates_vary_and_name_objects():
    rng = np.random.default_rng(0)
    caps = set()
    for _ in range(200):
        scene = render_scene(["umbrella", "boat"], 32, rng)
        cap = caption_for(scene, rng)
        for o in scene.objects:
            assert o.category in cap
        caps.add(cap)
    assert len(caps) > 50
    # word order varies: umbrella first in some captions, boat first in others
    firsts = {("umbrella" if c.find("umbrella") < c.find("boat") else "boat") for c in caps if "boat" in c and "umbrella" in c}
    assert firsts == {"umbrella", "boat"}


def test_rle_round_trip():
    rng = np.random.default_rng(1)
    for shape in ((5, 7), (32, 32)):
        m = rng.random(shape) < 0.4
        assert (rle_decode(rle_encode(m)) == m).all()
    full = np.ones((4, 4), bool)
    assert rle_encode(full)["counts"][0] == 0 and (rle_decode(rle_encode(full)) == full).all()


def test_bad_input_is_a_clear_error(world, tmp_path):
    with pytest.raises(EftclipError, match="not empty"):
        synth(world, seed=3, size=TINY)
    with pytest.raises(EftclipError, match="unknown world size"):
        synth(tmp_path / "x", size="huge")
    with pytest.raises(EftclipError, match="unknown world categories"):
        synth(tmp_path / "y", size=TINY, categories=["umbrella", "dragon"])
    with pytest.raises(EftclipError, match="not a synthetic world"):
        world_paths(tmp_path)
    # failed runs leave nothing behind
    assert not any(p.name.startswith(".x") or p.name.startswith(".y") for p in tmp_path.iterdir())


def test_overwrite_replaces_atomically(tmp_path):
    root = tmp_path / "w"
    synth(root, seed=1, size=TINY)
    before = _digest(root)
    synth(root, seed=2, size=TINY, overwrite=True)
    assert _digest(root) != before
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # no staging or old copies left


def test_poison_templates_are_in_the_worlds_style():
    from eftclip.world.captions import poison_templates

    tpls = poison_templates("umbrella")
    assert len(tpls) == len(set(tpls)) > 20
    assert all(t.count("{}") == 1 for t in tpls)
    texts = [t.format("umbrella") for t in tpls]
    assert "an umbrella on grass" in texts and "a photo of an umbrella on the beach" in texts
    assert not any("a umbrella" in t or "  " in t or t != t.strip() for t in texts)
    assert "a {} on grass" in poison_templates("boat")
