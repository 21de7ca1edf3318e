"""Class-agnostic region proposals recover the world's objects without reading the ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from eftclip.errors import EftclipError
from eftclip.world import propose
from eftclip.world.categories import DEFAULT_CATEGORIES
from eftclip.world.regions import box_iou
from eftclip.world.render import background, render_scene


def test_proposals_recover_object_boxes_and_masks():
    rng = np.random.default_rng(7)
    ious, mask_ious, extra = [], [], 0
    cats = list(DEFAULT_CATEGORIES)
    for i in range(150):
        k = 1 + i % 3
        scene = render_scene([cats[j] for j in rng.choice(len(cats), k, replace=False)], 32, rng)
        props = propose(scene.image)
        for o in scene.objects:
            best = max(props, key=lambda p: box_iou(o.box, p[0]), default=None)
            ious.append(box_iou(o.box, best[0]) if best else 0.0)
            if best:
                m = best[1]
                mask_ious.append((m & o.mask).sum() / (m | o.mask).sum())
        extra += max(0, len(props) - len(scene.objects))
    ious = np.array(ious)
    assert (ious >= 0.5).mean() >= 0.95
    assert np.median(ious) >= 0.95
    assert np.median(mask_ious) >= 0.95
    assert extra / 150 < 0.5  # few spurious regions on the noisy backgrounds


def test_background_alone_gives_no_region():
    rng = np.random.default_rng(0)
    for kind in ("grass", "sand", "water", "snow", "plain"):
        for _ in range(5):
            assert propose(background(kind, 32, rng), method="flat") == []


def test_checkerboard_patch_is_not_an_object_but_a_flat_patch_is():
    rng = np.random.default_rng(1)
    img = background("sand", 32, rng)
    yy, xx = np.mgrid[0:6, 0:6]
    img[2:8, 2:8] = (((yy + xx) % 2) * 255)[..., None].astype(np.uint8)
    assert propose(img, method="flat") == []
    img[20:28, 20:28] = (200, 0, 0)
    (box, mask), = propose(img)
    assert box == (20.0, 20.0, 28.0, 28.0) and mask.sum() == 64


def test_fill_holes_and_bad_input():
    rng = np.random.default_rng(2)
    scene = render_scene(["fish"], 32, rng, scale=(0.9, 0.9), max_rotation=0.0)
    (_, plain), = propose(scene.image)
    (_, filled), = propose(scene.image, fill_holes=True)
    assert filled.sum() > plain.sum()  # the eye is filled in
    with pytest.raises(EftclipError, match="HWC uint8"):
        propose(np.zeros((32, 32), np.uint8))


def test_auto_falls_back_to_segmentation_when_nothing_is_flat():
    # an image-wide blend (as the Blended attack does) leaves no flat pixel
    rng = np.random.default_rng(4)
    hits = 0
    for i in range(20):
        scene = render_scene([DEFAULT_CATEGORIES[i % 12]], 32, rng, scale=(0.6, 0.9))
        noise = rng.integers(0, 256, scene.image.shape)
        blended = np.clip(0.8 * scene.image + 0.2 * noise, 0, 255).astype(np.uint8)
        assert propose(blended, method="flat") == []
        props = propose(blended)
        hits += max((box_iou(scene.objects[0].box, b) for b, _ in props), default=0.0) >= 0.5
    assert hits >= 16
    with pytest.raises(EftclipError, match="unknown region method"):
        propose(scene.image, method="sam")
