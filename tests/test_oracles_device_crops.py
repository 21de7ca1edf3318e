"""Crops cut and resized on the torch device (roi_align) against the PIL path they replace."""

import numpy as np
import pytest
import torch
from PIL import Image

from eftclip.errors import EftclipError
from eftclip.oracles.base import extract_crops
from eftclip.oracles.device_crops import (
    ClipInput, centred_squares, clip_input, pixel_bounds, resize_boxes, upload, wants_device_crops,
)


@pytest.fixture(scope="module")
def bundle():
    from eftclip.models import create_model

    with torch.random.fork_rng(devices=[]):
        return create_model("eftclip-tiny-vit", seed=0)


def smooth_image(h=120, w=90):
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx * 255 / w, yy * 255 / h, 128 + 60 * np.sin(xx / 7)], 2).astype(np.uint8)


def test_pixel_bounds_follow_extract_crops():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    boxes = np.concatenate([rng.uniform(-10, 80, (40, 2)), rng.uniform(0, 30, (40, 2))], 1)
    boxes[:, 2:] += boxes[:, :2]  # x2 >= x1, y2 >= y1, some outside the image, some thinner than a pixel
    for pad, min_side in ((0.0, 1), (0.2, 2), (0.0, 5)):
        crops = extract_crops(im, [tuple(b) for b in boxes], pad=pad, min_side=min_side)
        bounds = pixel_bounds(torch.tensor(boxes), 70, 50, pad=pad, min_side=min_side).long().tolist()
        for crop, (x1, y1, x2, y2) in zip(crops, bounds):
            assert np.array_equal(crop, im[y1:y2, x1:x2])


def test_centred_squares_keep_the_short_side():
    sq = centred_squares(torch.tensor([[10.0, 20.0, 50.0, 30.0], [0.0, 0.0, 4.0, 8.0]]))
    assert sq.tolist() == [[25.0, 20.0, 35.0, 30.0], [0.0, 2.0, 4.0, 6.0]]


def test_resize_boxes_matches_the_models_pil_transform(bundle):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    spec = clip_input(bundle.preprocess_val)
    assert spec == ClipInput(32, tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))
    im = smooth_image()
    boxes = [(3.2, 5.7, 80.1, 60.2), (10, 10, 14, 50), (0, 0, 90, 120), (40.5, 30.5, 41, 31)]
    ref = torch.stack([bundle.preprocess_val(Image.fromarray(c)) for c in extract_crops(im, boxes, min_side=2)])
    ours = resize_boxes(upload([im], "cpu"), [pixel_bounds(torch.tensor(boxes), 90, 120, min_side=2)], spec)
    assert ours.shape == ref.shape == (4, 3, 32, 32)
    grey = 1 / 255 / min(spec.std)  # one grey level in normalised units
    diff = (ours - ref).abs()
    assert diff.mean() < grey and diff.max() < 4 * grey


def test_resize_boxes_batches_images_of_several_sizes_and_masks(bundle):
    spec = clip_input(bundle.preprocess_val)
    a, b = smooth_image(60, 40), smooth_image(30, 100)
    on_device = upload([a, b], "cpu")
    assert on_device.shape == (2, 3, 60, 100)
    box_a, box_b = torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.tensor([[10.0, 0.0, 40.0, 30.0], [0, 0, 100, 30]])
    both = resize_boxes(on_device, [box_a, box_b], spec)
    alone = resize_boxes(upload([b], "cpu"), [box_b], spec)
    assert both.shape == (3, 3, 32, 32) and torch.allclose(both[1:], alone, atol=1e-5)
    # a, padded on the right and bottom in the batch, reads its own edge there as it does alone
    edge = torch.tensor([[20.0, 40.0, 40.0, 60.0]])
    assert torch.allclose(resize_boxes(on_device, [edge, box_b[:0]], spec), resize_boxes(upload([a], "cpu"), [edge],
                                                                                        spec), atol=1e-5)
    mask = torch.zeros((1, 60, 40), dtype=torch.bool)
    mask[:, :, :20] = True  # the left half of box_a
    masked = resize_boxes(on_device, [box_a, box_b], spec, masks=[mask, None], fill=0.0)
    black = (0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    # the mask's edge at x = 20 of 40 falls between output columns 15 and 16 of 32
    assert torch.allclose(masked[0, :, :, 16:], black.view(3, 1, 1).expand(3, 32, 16))
    assert torch.equal(masked[0, :, :, :16], both[0, :, :, :16]) and torch.equal(masked[1:], both[1:])


def test_clip_input_refuses_other_transforms(bundle):
    from torchvision import transforms as T

    assert clip_input(T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])) is None
    assert clip_input(T.Compose([T.Resize(32), T.CenterCrop(28), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])) \
        is None
    assert clip_input(bundle.preprocess_val).size == 32


def test_device_crops_default_only_on_cuda():
    assert wants_device_crops(None, "cpu") is False and wants_device_crops(None, "cuda:1") is True
    assert wants_device_crops(True, "cpu") is True and wants_device_crops(False, "cuda") is False


def test_resize_boxes_names_mismatched_inputs(bundle):
    spec = clip_input(bundle.preprocess_val)
    on_device = upload([smooth_image(20, 20)], "cpu")
    with pytest.raises(EftclipError, match="2 box lists for 1 images"):
        resize_boxes(on_device, [torch.zeros((0, 4)), torch.zeros((0, 4))], spec)
    with pytest.raises(EftclipError, match="image 0: 2 masks for 1 boxes"):
        resize_boxes(on_device, [torch.tensor([[0.0, 0, 5, 5]])], spec, masks=[torch.ones((2, 20, 20), dtype=bool)])
    with pytest.raises(EftclipError, match=r"image 0: boxes must be \(N, 4\)"):
        resize_boxes(on_device, [torch.zeros(4)], spec)


def test_pixel_bounds_round_in_float64():
    # a box edge a hair past a whole pixel takes that pixel, as extract_crops does in float64
    assert pixel_bounds(torch.tensor([[0.0, 0.0, 10.00000001, 5.0]], dtype=torch.float64), 20, 20).tolist() == \
        [[0.0, 0.0, 11.0, 5.0]]


def test_upload_names_a_bad_image():
    with pytest.raises(EftclipError, match="image 1: expected HWC uint8 RGB"):
        upload([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)], "cpu")


def test_examine_batch_on_device_matches_the_pil_path(bundle):
    from eftclip.detection.scoring import ClipScorer, examine_batch
    from eftclip.detection.sources import ImageItem
    from eftclip.oracles.base import Found, OracleResult

    class Boxes:  # a fixed oracle: the same two regions in every image
        def find_batch(self, images, prompts):
            return [OracleResult([Found(p[0], 0.9, (2.0, 3.0, 40.0, 50.0)), Found(p[1], 0.4, (0.0, 0.0, 9.5, 9.5))],
                                 []) for p in prompts]

    vocab = ["tree", "house", "car", "dog", "sky"]
    pics = [Image.fromarray(smooth_image(60, 80)), Image.fromarray(smooth_image(90, 50)[::-1].copy())]
    batch = [(i, ImageItem(str(i), str(i), None, None, lambda: None), p) for i, p in enumerate(pics)]
    host = examine_batch(batch, ClipScorer(bundle, vocab, ["a photo of a {}."], "cpu", 8, False), Boxes(), 3)
    dev = examine_batch(batch, ClipScorer(bundle, vocab, ["a photo of a {}."], "cpu", 8, True), Boxes(), 3)
    # a random CLIP tells crops apart by about 0.01 in probability; the two paths agree to 0.002
    for h, d in zip(host, dev):
        assert [x["box"] for x in h["finds"]] == [x["box"] for x in d["finds"]]
        assert [lab for lab, _ in h["clip"]] == [lab for lab, _ in d["clip"]]
        assert np.allclose([p for _, p in h["clip"]], [p for _, p in d["clip"]], atol=0.002)
        assert [x["crop"][0][0] for x in h["finds"]] == [x["crop"][0][0] for x in d["finds"]]
        assert np.allclose([x["crop"][0][1] for x in h["finds"]], [x["crop"][0][1] for x in d["finds"]], atol=0.002)
