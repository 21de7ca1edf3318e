"""Triggers: each changes only what its mask says, blends/warps are bounded, seeds reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eftclip.attacks import TRIGGERS, TriggerResult, create_trigger
from eftclip.attacks.badnet import BadNetTrigger
from eftclip.attacks.trojannet import trojannet_cells, unrank_combination
from eftclip.errors import EftclipError

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"


def smooth_image(h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """A natural-ish image: smooth gradients plus mild noise (HWC uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 80 * np.sin(xx / 5), 128 + 80 * np.cos(yy / 7), 100 + 3 * (xx + yy) % 120], axis=2)
    return np.clip(base + rng.normal(0, 4, size=(h, w, 3)), 0, 255).astype(np.uint8)


PATCH_CASES = [
    ("badnet", {"size": 8, "pattern": "noise"}),
    ("badnet", {"size": 6, "pattern": "yellow", "position": "top-left"}),
    ("badnet", {"size": 8, "pattern": "checkerboard", "position": "random"}),
    ("badnet", {"size": 5, "position": "3,7", "alpha": 0.5}),
    ("trojannet", {"cell_size": 2, "pattern_id": 17}),
    ("trojannet", {"cell_size": 1, "position": "random"}),
]


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


def test_registry_has_all_five():
    assert set(TRIGGERS) == {"badnet", "blended", "wanet", "trojannet", "trojannn"}


@pytest.mark.parametrize("name,params", PATCH_CASES)
def test_patch_changes_only_masked_pixels(name, params):
    img = smooth_image()
    trig = create_trigger(name, **params)
    res = trig.apply(img, np.random.default_rng(3))
    assert isinstance(res, TriggerResult)
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    assert res.mask.shape == img.shape[:2] and res.mask.dtype == bool
    diff = changed(res.image, img)
    assert not diff[~res.mask].any(), "pixels outside the mask changed"
    assert diff.sum() > 0.5 * res.mask.sum(), "the patch barely changed its own region"
    side = params.get("size") or 4 * params["cell_size"]
    assert res.mask.sum() == side * side
    x1, y1, x2, y2 = res.box_xyxy()
    assert (x2 - x1, y2 - y1) == (side, side)
    assert img is not res.image and np.array_equal(img, smooth_image()), "input was modified in place"


def test_badnet_positions_are_where_asked():
    img = smooth_image(40, 30)
    for pos, box in [
        ("top-left", (0, 0, 8, 8)),
        ("bottom-right", (22, 32, 30, 40)),
        ("top-right", (22, 0, 30, 8)),
        ("5,9", (5, 9, 13, 17)),
    ]:
        res = create_trigger("badnet", size=8, position=pos).apply(img, np.random.default_rng(0))
        assert res.box_xyxy() == tuple(float(v) for v in box), pos


def test_badnet_noise_pattern_is_the_same_on_every_image():
    trig = create_trigger("badnet", size=6, position="top-left", pattern_seed=4)
    a = trig.apply(smooth_image(seed=1), np.random.default_rng(0)).image[:6, :6]
    b = trig.apply(smooth_image(seed=2), np.random.default_rng(9)).image[:6, :6]
    assert np.array_equal(a, b)
    other = create_trigger("badnet", size=6, position="top-left", pattern_seed=5)
    c = other.apply(smooth_image(seed=1), np.random.default_rng(0)).image[:6, :6]
    assert not np.array_equal(a, c)


def test_yellow_and_checkerboard_pixels():
    img = smooth_image()
    y = create_trigger("badnet", pattern="yellow", size=4, position="top-left").apply(img, np.random.default_rng(0))
    assert (y.image[:4, :4] == np.array([255, 255, 0], dtype=np.uint8)).all()
    c = create_trigger("badnet", pattern="checkerboard", size=8, position="top-left").apply(img, np.random.default_rng(0))
    patch = c.image[:8, :8, 0]
    assert set(np.unique(patch)) == {0, 255}
    assert patch[0, 0] == 255 and patch[0, 2] == 0 and patch[2, 0] == 0 and patch[2, 2] == 255


def test_badnet_image_file_pattern(tmp_path):
    src = np.zeros((20, 20, 3), dtype=np.uint8)
    src[:, :, 2] = 200  # blue
    path = tmp_path / "logo.png"
    Image.fromarray(src).save(path)
    trig = create_trigger("badnet", pattern=str(path), size=5, position="top-left")
    res = trig.apply(smooth_image(), np.random.default_rng(0))
    assert (res.image[:5, :5] == np.array([0, 0, 200], dtype=np.uint8)).all()
    assert trig.params()["pattern"] == str(path.resolve())


def test_random_position_reproducible_and_seed_dependent():
    trig = create_trigger("badnet", size=4, position="random")
    img = smooth_image(64, 64)
    a = trig.apply(img, np.random.default_rng(11))
    b = trig.apply(img, np.random.default_rng(11))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    boxes = {trig.apply(img, np.random.default_rng(s)).box_xyxy() for s in range(8)}
    assert len(boxes) > 1, "random position never moved across seeds"


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5])
def test_blended_is_bounded_and_covers_the_image(alpha):
    img = smooth_image()
    res = create_trigger("blended", alpha=alpha).apply(img, np.random.default_rng(0))
    delta = np.abs(res.image.astype(int) - img.astype(int))
    assert delta.max() <= alpha * 255 + 1
    assert delta.mean() > alpha * 255 * 0.1  # the pattern is really there
    assert res.mask.all()


def test_blended_noise_same_pattern_for_same_seed_and_size():
    a = create_trigger("blended", pattern_seed=1).apply(smooth_image(), np.random.default_rng(0))
    b = create_trigger("blended", pattern_seed=1).apply(smooth_image(), np.random.default_rng(5))
    c = create_trigger("blended", pattern_seed=2).apply(smooth_image(), np.random.default_rng(0))
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_blended_image_file_pattern(tmp_path):
    path = tmp_path / "white.png"
    Image.fromarray(np.full((7, 9, 3), 255, dtype=np.uint8)).save(path)
    img = np.zeros((16, 24, 3), dtype=np.uint8)
    res = create_trigger("blended", pattern=str(path), alpha=0.25).apply(img, np.random.default_rng(0))
    assert (res.image == 64).all()  # round(0.25 * 255)


def test_wanet_warp_is_small_bounded_and_deterministic():
    img = smooth_image(48, 48)
    trig = create_trigger("wanet")
    a = trig.apply(img, np.random.default_rng(0))
    b = trig.apply(img, np.random.default_rng(1))
    assert np.array_equal(a.image, b.image), "without noise mode the warp does not use the rng"
    delta = np.abs(a.image.astype(int) - img.astype(int))
    assert 0 < delta.mean() < 8, f"mean change {delta.mean()} not small-but-nonzero"
    assert np.array_equal(a.mask, changed(a.image, img))
    # every output pixel lies within the range of the input pixels around it (bounded displacement)
    r = int(np.ceil(trig.max_displacement_px))
    assert trig.max_displacement_px <= 1.0
    pad = np.pad(img.astype(int), ((r + 1, r + 1), (r + 1, r + 1), (0, 0)), mode="edge")
    H, W = img.shape[:2]
    windows = np.stack(
        [pad[r + 1 + dy : r + 1 + dy + H, r + 1 + dx : r + 1 + dx + W] for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    )
    out = a.image.astype(int)
    assert (out >= windows.min(axis=0) - 1).all() and (out <= windows.max(axis=0) + 1).all()


def test_wanet_grid_displacement_is_bounded():
    trig = create_trigger("wanet", s=1.0, k=4)
    H = W = 40
    grid = trig.grid((H, W))[0].numpy()
    ys, xs = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    dx = (grid[..., 0] - xs) * (W - 1) / 2
    dy = (grid[..., 1] - ys) * (H - 1) / 2
    disp = np.hypot(dx, dy)
    assert disp.max() <= np.hypot(trig.max_displacement_px, trig.max_displacement_px) + 1e-5
    assert disp.mean() > 0.05


def test_wanet_noise_mode_uses_rng():
    img = smooth_image(48, 48)
    trig = create_trigger("wanet", noise="true")
    a = trig.apply(img, np.random.default_rng(0))
    b = trig.apply(img, np.random.default_rng(0))
    c = trig.apply(img, np.random.default_rng(1))
    plain = create_trigger("wanet").apply(img, np.random.default_rng(0))
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.image, plain.image)


def test_wanet_other_seed_other_warp():
    img = smooth_image(48, 48)
    a = create_trigger("wanet", pattern_seed=0).apply(img, np.random.default_rng(0))
    b = create_trigger("wanet", pattern_seed=1).apply(img, np.random.default_rng(0))
    assert not np.array_equal(a.image, b.image)


def test_trojannet_pattern_combinatorics():
    assert unrank_combination(0, 16, 5) == (0, 1, 2, 3, 4)
    assert unrank_combination(4367, 16, 5) == (11, 12, 13, 14, 15)
    seen = {unrank_combination(i, 6, 3) for i in range(20)}
    assert len(seen) == 20  # C(6, 3) distinct subsets
    cells = trojannet_cells(123)
    assert cells.shape == (4, 4) and (~cells).sum() == 5
    res = create_trigger("trojannet", pattern_id=123, cell_size=3, position="top-left").apply(
        np.full((20, 20, 3), 128, np.uint8), np.random.default_rng(0)
    )
    stamped = res.image[:12:3, :12:3, 0]
    assert np.array_equal(stamped == 255, cells)
    assert set(np.unique(res.image[:12, :12])) == {0, 255}


def test_params_roundtrip_through_json_and_strings():
    for name, params in PATCH_CASES + [("blended", {"alpha": 0.3}), ("wanet", {"k": 8, "s": 0.75, "noise": True})]:
        trig = create_trigger(name, **params)
        data = json.loads(json.dumps(trig.params()))
        assert create_trigger(name, **data) == trig
        as_strings = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in data.items()}
        assert create_trigger(name, **as_strings) == trig
    t = create_trigger("badnet", size="8", alpha="0.5", position="random")
    assert isinstance(t, BadNetTrigger) and t.size == 8 and t.alpha == 0.5


@pytest.mark.parametrize(
    "name,params,needle",
    [
        ("nosuch", {}, "known attacks: badnet"),
        ("badnet", {"size": 0}, "size"),
        ("badnet", {"size": "eight"}, "size"),
        ("badnet", {"position": "middle"}, "position"),
        ("badnet", {"pattern": "/no/such/file.png"}, "pattern"),
        ("badnet", {"alpha": 1.5}, "alpha"),
        ("badnet", {"colour": "red"}, "unknown parameter 'colour'"),
        ("blended", {"alpha": 0}, "alpha"),
        ("wanet", {"k": 1}, "k must"),
        ("wanet", {"noise": "maybe"}, "noise"),
        ("trojannet", {"pattern_id": 4368}, "pattern_id"),
        ("trojannn", {}, "pattern_file"),
        ("trojannn", {"pattern_file": "/no/such.png"}, "not found"),
    ],
)
def test_bad_parameters_are_clear_errors(name, params, needle):
    with pytest.raises(EftclipError, match=needle):
        create_trigger(name, **params)


def test_patch_larger_than_image_names_the_sizes():
    with pytest.raises(EftclipError, match=r"16x16 px is larger than the 12x10 px image"):
        create_trigger("badnet", size=16).apply(np.zeros((10, 12, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(EftclipError, match="does not fit"):
        create_trigger("badnet", size=4, position="30,0").apply(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0))


def test_non_image_input_is_rejected():
    with pytest.raises(EftclipError, match="HWC uint8"):
        create_trigger("badnet", size=2).apply(np.zeros((8, 8), np.uint8), np.random.default_rng(0))
    with pytest.raises(EftclipError, match="HWC uint8"):
        create_trigger("blended").apply(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))


def test_badnet_on_a_real_cifar_image():
    path = SHARED / "cifar10" / "test" / "cat" / "0000.jpg"
    if not path.exists():
        pytest.skip(f"real CIFAR-10 image not found at {path} (needs ../shared/data beside the repo)")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (32, 32, 3)
    res = create_trigger("badnet", size=6, position="bottom-right", pattern="checkerboard").apply(
        img, np.random.default_rng(0)
    )
    expected = np.zeros((32, 32), bool)
    expected[26:, 26:] = True
    assert np.array_equal(res.mask, expected)
    diff = changed(res.image, img)
    assert not diff[~expected].any() and diff[expected].mean() > 0.5


def test_wanet_on_a_real_cifar_image_is_subtle():
    path = SHARED / "cifar10" / "test" / "cat" / "0000.jpg"
    if not path.exists():
        pytest.skip(f"real CIFAR-10 image not found at {path} (needs ../shared/data beside the repo)")
    img = np.asarray(Image.open(path).convert("RGB"))
    res = create_trigger("wanet").apply(img, np.random.default_rng(0))
    delta = np.abs(res.image.astype(int) - img.astype(int))
    # imperceptible on a natural image: a few grey levels on average, but really there
    assert 0.2 < delta.mean() < 10, delta.mean()  # measured 5.6 with the defaults
    assert res.mask.mean() > 0.3 and np.array_equal(res.mask, changed(res.image, img))
