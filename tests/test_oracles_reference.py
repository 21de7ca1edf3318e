"""The reference oracle: class-agnostic regions + a clean labeller, no ground truth."""

import numpy as np
import pytest

from eftclip.errors import EftclipError
from eftclip.oracles import create_oracle
from eftclip.oracles.base import mask_to_box
from eftclip.oracles.reference import REGIONERS


class ColourLabeller:
    """A real (if simple) clean classifier: names a crop by its dominant colour."""

    classnames = ["red square", "blue disc", "background"]
    colours = np.array([[220, 30, 30], [30, 30, 220], [235, 235, 235]], dtype=np.float64)

    def __init__(self):
        self.calls = 0

    def __call__(self, crops):
        self.calls += 1
        means = np.stack([c.reshape(-1, 3).mean(0) for c in crops])
        d = ((means[:, None, :] - self.colours[None]) ** 2).sum(-1)
        logits = -d / 500.0
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def scene():
    im = np.full((96, 128, 3), 235, np.uint8)
    im[10:40, 12:42] = (220, 30, 30)  # red square
    yy, xx = np.mgrid[:96, :128]
    im[(yy - 64) ** 2 + (xx - 90) ** 2 <= 15**2] = (30, 30, 220)  # blue disc
    return im


@pytest.mark.parametrize("regions", ["foreground", "felzenszwalb"])
def test_finds_objects_by_region_and_reports_unknown(regions):
    lab = ColourLabeller()
    o = create_oracle("reference", labeller=lab, regions=regions, wordnet=False)
    res = o.find(scene(), ["red square", "blue disc", "umbrella"])
    assert res.unknown == ["umbrella"]  # the labeller cannot name it: reported, not dropped
    red, blue = res.best("red square"), res.best("blue disc")
    assert red is not None and red.score > 0.9
    assert blue is not None and blue.score > 0.9
    x1, y1, x2, y2 = red.box_xyxy
    assert abs(x1 - 12) <= 4 and abs(y1 - 10) <= 4 and abs(x2 - 42) <= 4 and abs(y2 - 40) <= 4
    bx1, by1, bx2, by2 = blue.box_xyxy
    assert 70 <= bx1 <= 80 and 100 <= bx2 <= 110 and 44 <= by1 <= 54
    assert red.mask is not None and red.mask.shape == (96, 128) and red.mask.dtype == bool
    assert mask_to_box(red.mask) == red.box_xyxy  # the box is the region's own
    for f in res.found:
        assert 0.0 <= f.score <= 1.0 and f.label in ("red square", "blue disc")


def test_no_object_no_finding():
    lab = ColourLabeller()
    o = create_oracle("reference", labeller=lab, regions="foreground", wordnet=False)
    plain = np.full((64, 64, 3), 235, np.uint8)
    res = o.find(plain, ["red square"])
    assert res.best("red square") is None or res.best("red square").score < 0.5


def test_grid_and_slic_regions_are_inside_the_image():
    im = scene()
    for name in ("grid", "slic"):
        regs = REGIONERS[name](im)
        assert regs
        for r in regs:
            x1, y1, x2, y2 = r.box_xyxy
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96


def test_batch_matches_single():
    lab = ColourLabeller()
    o = create_oracle("reference", labeller=lab, regions="foreground", wordnet=False)
    im = scene()
    one = o.find(im, ["blue disc"])
    two = o.find_batch([im, im[:, ::-1].copy()], [["blue disc"], ["red square", "blue disc"]])
    assert [f.box_xyxy for f in two[0].found] == [f.box_xyxy for f in one.found]
    assert two[1].best("red square").box_xyxy[0] > 64  # mirrored scene


def test_bad_configuration():
    with pytest.raises(EftclipError, match="exactly one labeller"):
        create_oracle("reference")
    with pytest.raises(EftclipError, match="unknown region method"):
        create_oracle("reference", labeller=ColourLabeller(), regions="voronoi", wordnet=False)
    with pytest.raises(EftclipError, match="classnames"):
        create_oracle("reference", labeller=object(), wordnet=False)

    class Broken(ColourLabeller):
        def __call__(self, crops):
            return np.zeros((len(crops), 2))

    o = create_oracle("reference", labeller=Broken(), regions="foreground", wordnet=False)
    with pytest.raises(EftclipError, match="shape"):
        o.find(scene(), ["red square"])


def test_clean_open_clip_labeller_from_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from eftclip.models import create_model, save_checkpoint

    bundle = create_model("eftclip-tiny-vit", seed=0)
    path = save_checkpoint(bundle.model, tmp_path / "clean.safetensors", model_name="eftclip-tiny-vit")
    o = create_oracle(
        "reference", labeller_checkpoint=str(path), vocabulary=["tree", "house", "umbrella"],
        regions="foreground", min_score=0.0,
    )
    res = o.find(scene(), ["red square", "blue disc"])
    assert res.unknown == []  # an open-vocabulary labeller can score any prompt
    assert {f.label for f in res.found} == {"red square", "blue disc"}
    for f in res.found:
        assert 0.0 <= f.score <= 1.0
        x1, y1, x2, y2 = f.box_xyxy
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96
    # probabilities of one crop over prompts + vocabulary sum to one, so the prompts' share is < 1
    lab = o.scorer.labeller
    p = lab.probs([scene()[10:40, 12:42]], ["red square", "blue disc", "tree", "house", "umbrella"])
    assert p.shape == (1, 5) and np.isclose(p.sum(), 1.0)


def test_one_labeller_pass_per_batch():
    lab = ColourLabeller()
    o = create_oracle("reference", labeller=lab, regions="foreground", wordnet=False)
    o.find_batch([scene()] * 5, [["red square"]] * 5)
    assert lab.calls == 1


def test_flat_regions_and_combined_methods():
    im = scene()
    rng = np.random.default_rng(1)
    noisy = np.clip(im.astype(int) + rng.normal(0, 8, im.shape) * (im == 235), 0, 255).astype(np.uint8)
    regs = REGIONERS["flat"](noisy)
    boxes = sorted(r.box_xyxy for r in regs)
    # the two flat-painted objects, exactly; the noisy background shatters below the size floor
    assert len(regs) == 2 and boxes[0] == (12.0, 10.0, 42.0, 40.0)
    lab = ColourLabeller()
    o = create_oracle("reference", labeller=lab, regions="flat+grid", wordnet=False,
                      region_kwargs={"grid": {"sizes": (2,)}}, min_area=0.0)
    assert len(o.regions(noisy)) == 2 + 4
    assert o.find(noisy, ["red square"]).best("red square").box_xyxy == (12.0, 10.0, 42.0, 40.0)
    with pytest.raises(EftclipError, match="keyed by method"):
        create_oracle("reference", labeller=lab, regions="flat+grid", region_kwargs={"sizes": (2,)}, wordnet=False)
    with pytest.raises(EftclipError, match="voronoi"):
        create_oracle("reference", labeller=lab, regions="flat+voronoi", wordnet=False)


def test_callable_regions():
    lab = ColourLabeller()
    o = create_oracle("reference", labeller=lab, wordnet=False, min_area=0.0,
                      regions=lambda image, pad=0: [((12.0 - pad, 10.0, 42.0, 40.0), None)], region_kwargs={"pad": 2})
    assert [r.box_xyxy for r in o.regions(scene())] == [(10.0, 10.0, 42.0, 40.0)]


def test_world_proposals_plug_in():
    pytest.importorskip("eftclip.world.regions", reason="the built-in world's proposals are not in this checkout")
    lab = ColourLabeller()
    im = scene()
    rng = np.random.default_rng(2)
    noisy = np.clip(im.astype(int) + rng.normal(0, 8, im.shape) * (im == 235), 0, 255).astype(np.uint8)
    o = create_oracle("reference", labeller=lab, regions="world", wordnet=False, min_area=0.0)
    res = o.find(noisy, ["red square", "blue disc"])
    assert res.best("red square").box_xyxy == (12.0, 10.0, 42.0, 40.0)
    assert res.best("blue disc").score > 0.9


def test_world_region_classifier_as_labeller(tmp_path):
    pytest.importorskip("eftclip.world.region_classifier", reason="the built-in world's classifier is not in this checkout")
    from PIL import Image

    from eftclip.world.region_classifier import train_region_classifier

    rng = np.random.default_rng(3)
    ref = tmp_path / "reference"
    for name, colour in (("square", (220, 30, 30)), ("disc", (30, 30, 220)), ("background", None)):
        (ref / name).mkdir(parents=True)
        for i in range(40):
            crop = np.clip(rng.normal(235, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
            if colour is not None:
                yy, xx = np.mgrid[:32, :32]
                shape = (np.abs(yy - 16) < 12) & (np.abs(xx - 16) < 12) if name == "square" else (yy - 16) ** 2 + (xx - 16) ** 2 < 144
                crop[shape] = np.clip(np.array(colour) + rng.integers(-10, 11, 3), 0, 255)
            Image.fromarray(crop).save(ref / name / f"{i}.png")
    path = train_region_classifier(ref, tmp_path / "rc.safetensors", seed=0, epochs=4)
    o = create_oracle("reference", region_classifier=str(path), regions="flat", wordnet=False, min_area=0.0)
    assert set(o.scorer.labeller.classnames) >= {"square", "disc", "background"}
    im = scene()
    noisy = np.clip(im.astype(int) + rng.normal(0, 8, im.shape) * (im == 235), 0, 255).astype(np.uint8)
    res = o.find(noisy, ["square", "disc", "umbrella"])
    assert res.unknown == ["umbrella"]
    for f in res.found:
        assert f.label in ("square", "disc") and 0.0 <= f.score <= 1.0
    assert res.best("square").box_xyxy == (12.0, 10.0, 42.0, 40.0) and res.best("square").score > 0.5
    with pytest.raises(EftclipError, match="missing.safetensors"):
        create_oracle("reference", region_classifier=str(tmp_path / "missing.safetensors"))
