"""The world oracle's region classifier: trained on reference crops only, accurate, safe to load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eftclip.errors import EftclipError
from eftclip.world import WorldSize, load_region_classifier, propose, synth, train_region_classifier, world_paths
from eftclip.world.region_classifier import RegionClassifierConfig
from eftclip.world.render import background, render_scene

SMALL = WorldSize(train=8, pool=4, detect=4, reference_per_class=60, eval_per_class=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("wc") / "world"
    synth(root, seed=5, size=SMALL)
    out = tmp_path_factory.mktemp("rc") / "rc.safetensors"
    torch_state = torch.random.get_rng_state()
    path = train_region_classifier(world_paths(root)["reference"], out, seed=0, epochs=16)
    # training used its own generator: the global torch RNG is untouched
    assert torch.equal(torch_state, torch.random.get_rng_state())
    return root, path


def test_accurate_on_held_out_reference_crops(trained):
    _, path = trained
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["classnames"][-1] == "background" and "umbrella" in meta["classnames"]
    assert meta["metrics"]["val_n"] >= 60
    assert meta["metrics"]["val_accuracy"] >= 0.75


def test_names_proposed_regions_of_fresh_scenes(trained):
    # the oracle's path end to end: propose regions, crop their boxes, classify
    _, path = trained
    clf = load_region_classifier(path)
    rng = np.random.default_rng(11)
    hits = total = 0
    for i in range(60):
        cat = clf.classnames[i % 12]
        scene = render_scene([cat], 32, rng)
        props = propose(scene.image)
        if not props:
            continue
        (x0, y0, x1, y1), _ = props[0]
        probs = clf([scene.image[int(y0) : int(y1), int(x0) : int(x1)]])
        assert probs.shape == (1, len(clf.classnames))
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
        hits += clf.classnames[int(probs.argmax())] == cat
        total += 1
    assert total >= 55
    assert hits / total >= 0.7


def test_background_crops_go_to_background(trained):
    _, path = trained
    clf = load_region_classifier(path)
    rng = np.random.default_rng(3)
    crops = [background(k, 32, rng)[4:20, 6:26] for k in ("grass", "sand", "water", "snow", "plain") * 4]
    probs = clf(crops)
    assert (probs.argmax(1) == clf.classnames.index("background")).mean() >= 0.7


def test_same_seed_same_weights_and_bad_files(trained, tmp_path):
    root, path = trained
    again = train_region_classifier(world_paths(root)["reference"], tmp_path / "again", seed=0, epochs=1)
    again2 = train_region_classifier(world_paths(root)["reference"], tmp_path / "again2", seed=0, epochs=1)
    assert again.read_bytes() == again2.read_bytes()
    assert clf_empty(path).shape == (0, 13)
    with pytest.raises(EftclipError, match="not found"):
        load_region_classifier(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(again.read_bytes())
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(EftclipError, match="not a region classifier"):
        load_region_classifier(tmp_path / "bad.safetensors")
    with pytest.raises(EftclipError, match="reference folder not found"):
        train_region_classifier(tmp_path / "nope", tmp_path / "x", epochs=1)
    with pytest.raises(EftclipError, match="crop 0"):
        load_region_classifier(path)([np.zeros((5, 5), np.uint8)])


def clf_empty(path: Path):
    return load_region_classifier(path)([])
