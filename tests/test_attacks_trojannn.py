"""Trojaning-style patch: optimising against a tiny CLIP raises the target similarity; PNG round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eftclip.attacks import create_trigger
from eftclip.attacks.trojannn import TrojanNNTrigger, optimise_patch, save_pattern, target_similarity
from eftclip.cli import main as cli_main
from eftclip.errors import EftclipError

models = pytest.importorskip("eftclip.models", reason="eftclip.models is needed to build the tiny CLIP")


@pytest.fixture(scope="module")
def bundle():
    with torch.random.fork_rng():  # the test, not the library, fixes the random init
        torch.manual_seed(0)
        return models.create_model("eftclip-tiny-vit", seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(6)]


def test_optimised_patch_raises_target_similarity(bundle, images):
    before = TrojanNNTrigger.optimise(bundle, "umbrella", images, 0, torch.Generator().manual_seed(1), size=8, progress=False)
    out = optimise_patch(
        bundle, "umbrella", images, 12, torch.Generator().manual_seed(1), size=8, lr=0.1, progress=False
    )
    after = out["pattern"]
    assert after.shape == (8, 8, 3) and after.dtype == np.uint8
    assert out["history"][-1] > out["history"][0]
    # measured through the bundle's real preprocessing, not the differentiable copy
    s0 = target_similarity(bundle, "umbrella", images, before)
    s1 = target_similarity(bundle, "umbrella", images, after)
    assert s1 > s0 + 0.005, (s0, s1)
    # the first step's similarity is the initial patch's one: both paths agree
    assert abs(out["history"][0] - s0) < 0.01
    # model weights untouched, grad flags restored
    assert all(p.requires_grad for p in bundle.model.parameters())


def test_optimise_is_reproducible_under_a_generator(bundle, images):
    a = TrojanNNTrigger.optimise(bundle, "cat", images[:3], 3, torch.Generator().manual_seed(5), size=4, position="random", progress=False)
    b = TrojanNNTrigger.optimise(bundle, "cat", images[:3], 3, torch.Generator().manual_seed(5), size=4, position="random", progress=False)
    c = TrojanNNTrigger.optimise(bundle, "cat", images[:3], 3, torch.Generator().manual_seed(6), size=4, position="random", progress=False)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unit_excitation_term_raises_the_chosen_units(bundle, images):
    layer = "visual.transformer.resblocks.0.mlp.c_fc"
    acts = {}
    module = bundle.model.get_submodule(layer)

    def mean_units(pattern):
        h = module.register_forward_hook(lambda _m, _i, o: acts.__setitem__("a", o))
        try:
            target_similarity(bundle, "umbrella", images, pattern)
        finally:
            h.remove()
        return float(acts["a"][..., [0, 1, 2]].mean())

    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    p0 = TrojanNNTrigger.optimise(bundle, "umbrella", images[:3], 0, gen(), size=8, progress=False)
    p1 = TrojanNNTrigger.optimise(
        bundle, "umbrella", images[:3], 5, gen(), size=8, lr=0.2, layer=layer, units=[0, 1, 2], unit_weight=5.0, progress=False
    )
    assert mean_units(p1) > mean_units(p0)


def test_pattern_png_roundtrip_and_apply(tmp_path, images):
    pattern = np.random.default_rng(0).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    path = save_pattern(pattern, tmp_path / "p.png")
    trig = create_trigger("trojannn", pattern_file=str(path), position="top-left")
    res = trig.apply(images[0], np.random.default_rng(0))
    assert np.array_equal(res.image[:6, :6], pattern)  # lossless
    assert res.mask.sum() == 36 and not np.any(res.image[6:] != images[0][6:])
    resized = create_trigger("trojannn", pattern_file=str(path), size=12)
    assert resized.apply(images[0], np.random.default_rng(0)).mask.sum() == 144
    with pytest.raises(EftclipError, match=".png"):
        save_pattern(pattern, tmp_path / "p.jpg")


def test_optimise_bad_inputs(bundle, images):
    with pytest.raises(EftclipError, match="torch.Generator"):
        TrojanNNTrigger.optimise(bundle, "cat", images, 1, np.random.default_rng(0))
    with pytest.raises(EftclipError, match="larger than image"):
        TrojanNNTrigger.optimise(bundle, "cat", images, 1, torch.Generator(), size=40)
    with pytest.raises(EftclipError, match="no layer"):
        TrojanNNTrigger.optimise(bundle, "cat", images, 1, torch.Generator(), layer="visual.nope", units=[0])


def test_cli_poison_optimises_a_trojannn_patch(tmp_path, capsys):
    root = tmp_path / "src"
    (root / "imgs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["image,caption"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
        lines.append(f"imgs/{i}.png,a photo of thing {i}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = cli_main([
        "poison", "--data", str(root / "train.csv"), "--attack", "trojannn", "--target", "umbrella", "--num", "2",
        "--out", str(out), "--trojannn-model", "eftclip-tiny-vit", "--trojannn-steps", "2", "--trojannn-size", "4",
        "--trojannn-images", "3",
    ])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    pattern_file = Path(manifest["attack_params"]["pattern_file"])
    assert pattern_file.parent == (out / "trojannn").resolve() and pattern_file.suffix == ".png"
    pattern = np.asarray(Image.open(pattern_file))
    assert pattern.shape == (4, 4, 3)
    for entry in manifest["poisoned"]:
        img = np.asarray(Image.open(out / entry["image"]))
        assert np.array_equal(img[-4:, -4:], pattern)  # stamped bottom-right, lossless
