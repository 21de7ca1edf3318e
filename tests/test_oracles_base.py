"""Oracle registry, result types and shared box/crop helpers."""

import sys

import numpy as np
import pytest

from eftclip.errors import EftclipError, MissingExtraError
from eftclip.oracles import ORACLES, Found, OracleResult, create_oracle
from eftclip.oracles.base import (
    BaseOracle,
    box_iou,
    check_image,
    check_prompts,
    clip_box,
    extract_crops,
    mask_to_box,
    nms,
)


def test_registry_names_and_unknown_name_lists_them():
    assert set(ORACLES) == {"reference", "onnx-detector", "fastsam", "owlv2", "grounding-dino"}
    with pytest.raises(EftclipError) as err:
        create_oracle("sam-9000")
    msg = str(err.value)
    assert "sam-9000" in msg and "onnx-detector" in msg and "owlv2" in msg


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("onnx-detector", {"model_path": "/nonexistent/detector.onnx"}),
        ("owlv2", {"model_path": "/nonexistent/owlv2"}),
        ("grounding-dino", {"model_path": "/nonexistent/gdino"}),
        ("fastsam", {"weights_path": "/nonexistent/FastSAM-x.pt", "clip_model": "x", "clip_checkpoint": "y"}),
        ("reference", {"labeller_checkpoint": "/nonexistent/clean.safetensors"}),
    ],
)
def test_missing_weights_path_is_named(name, kwargs):
    with pytest.raises(EftclipError) as err:
        create_oracle(name, **kwargs)
    assert "/nonexistent/" in str(err.value)


@pytest.mark.parametrize(
    "name,module,extra,kwargs",
    [
        ("owlv2", "transformers", "hf", {"model_path": "."}),
        ("grounding-dino", "transformers", "hf", {"model_path": "."}),
        ("fastsam", "ultralytics", "fastsam", {"weights_path": __file__, "clip_model": "x", "clip_checkpoint": __file__}),
    ],
)
def test_missing_extra_names_the_extra(monkeypatch, name, module, extra, kwargs):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError) as err:
        create_oracle(name, **kwargs)
    assert err.value.extra == extra and f"eftclip[{extra}]" in str(err.value)


def test_check_prompts_and_images():
    assert check_prompts([" dog", "dog", "cat "]) == ["dog", "cat"]
    with pytest.raises(EftclipError, match="no prompts"):
        check_prompts([])
    with pytest.raises(EftclipError, match="empty prompt"):
        check_prompts(["dog", "  "])
    with pytest.raises(EftclipError, match="list of strings"):
        check_prompts("dog")
    grey = np.zeros((5, 6), np.uint8)
    assert check_image(grey).shape == (5, 6, 3)
    assert check_image(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(EftclipError, match="uint8"):
        check_image(np.zeros((5, 6, 3), np.float32))
    with pytest.raises(EftclipError, match="shape"):
        check_image(np.zeros((5, 6, 2), np.uint8))


class _Counting(BaseOracle):
    name = "counting"

    def _find_one(self, image, prompts):
        h, w = image.shape[:2]
        return OracleResult([Found(p, 1.0, (0.0, 0.0, float(w), float(h))) for p in prompts], [])


def test_base_oracle_validates_batches():
    o = _Counting()
    im = np.zeros((4, 4, 3), np.uint8)
    res = o.find_batch([im, im], [["a"], ["b", "c", "b"]])
    assert [r.labels() for r in res] == [{"a"}, {"b", "c"}]
    assert o.find(im, ["x"]).best("x").box_xyxy == (0.0, 0.0, 4.0, 4.0)
    with pytest.raises(EftclipError, match="2 images but 1 prompt"):
        o.find_batch([im, im], [["a"]])
    with pytest.raises(EftclipError, match="image 1: no prompts"):
        o.find_batch([im, im], [["a"], []])
    with pytest.raises(EftclipError, match="min_score"):
        _Counting(min_score=1.5)


def test_boxes_masks_crops():
    assert clip_box((-5, 3, 20, 50), 10, 40) == (0.0, 3.0, 10.0, 40.0)
    assert clip_box((8, 9, 2, 1), 10, 10) == (2.0, 1.0, 8.0, 9.0)
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert mask_to_box(m) == (3.0, 2.0, 9.0, 5.0)
    assert mask_to_box(np.zeros((3, 3), bool)) is None
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    assert np.allclose(iou, [[1.0, 50 / 150, 0.0]])
    keep = nms(np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]]), np.array([0.5, 0.9, 0.3]), 0.5)
    assert keep.tolist() == [1, 2]
    img = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    crops = extract_crops(img, [(3, 2, 9, 5), (-4, -4, 0.2, 0.2)], masks=[m, None], fill=7)
    assert crops[0].shape == (3, 6, 3) and np.array_equal(crops[0], img[2:5, 3:9])
    assert crops[1].shape == (1, 1, 3)  # degenerate boxes still give a pixel
    m2 = np.zeros_like(m)
    m2[2, 3] = True
    masked = extract_crops(img, [(3, 2, 9, 5)], masks=[m2], fill=7)[0]
    assert np.array_equal(masked[0, 0], img[2, 3]) and (masked[1:] == 7).all()
    padded = extract_crops(img, [(4, 4, 6, 6)], pad=0.5)[0]
    assert padded.shape == (4, 4, 3)


def test_detection_gives_fastsam_its_device_crops_and_no_masks_unless_asked(monkeypatch):
    import eftclip.oracles as oracles
    from eftclip.detection.config import DetectConfig
    from eftclip.detection.scoring import build_models
    from eftclip.models import create_model

    assert oracles.detection_kwargs("reference", "cuda", True) == {"device": "cuda"}
    assert oracles.detection_kwargs("onnx-detector", "cuda", True) == {}
    seen = []
    monkeypatch.setattr(oracles, "create_oracle", lambda name, **kw: seen.append((name, kw)) or object())
    bundle = create_model("eftclip-tiny-vit", seed=0)
    for args, want in (({"weights_path": "w"}, {"weights_path": "w", "device": "cpu", "device_crops": True,
                                                 "keep_masks": False}),
                       ({"weights_path": "w", "keep_masks": True, "device": "meta"},
                        {"weights_path": "w", "device": "meta", "device_crops": True, "keep_masks": True})):
        cfg = DetectConfig(checkpoint="c", images="i", out="o", oracle="fastsam", oracle_args=args, device_crops=True)
        scorer, _ = build_models(cfg, ["tree", "house"], None, bundle)
        assert seen[-1] == ("fastsam", want) and scorer.spec is not None
