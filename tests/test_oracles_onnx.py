"""The ONNX detector oracle with the real FastestDet on real photos."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eftclip.errors import EftclipError
from eftclip.oracles import create_oracle
from eftclip.oracles.base import box_iou

SHARED = Path(__file__).parents[1] / ".." / "shared"
MODEL = SHARED / "models" / "fastestdet" / "FastestDet.onnx"
PHOTOS = SHARED / "data" / "photos"
COCO = SHARED / "data" / "coco-mini"
THETA = 0.5  # a sensible confirmation threshold (the paper uses 0.50 and 0.66)
DOG_BOX = (122, 200, 325, 540)  # the dog in darknet's dog.jpg, by eye (XYXY pixels)


@pytest.fixture(scope="module")
def oracle():
    if not MODEL.is_file() or not PHOTOS.is_dir():
        pytest.skip(f"real FastestDet or photos absent under {SHARED}")
    return create_oracle("onnx-detector", model_path=MODEL, classnames_path=PHOTOS / "coco.names", wordnet=False)


def load(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_finds_the_dog(oracle):
    res = oracle.find(load(PHOTOS / "dog.jpg"), ["dog", "puppy", "bicycle", "banana split"])
    assert res.unknown == ["banana split"]
    dog = res.best("dog")
    assert dog is not None and dog.score >= THETA
    assert box_iou(np.array([dog.box_xyxy]), np.array([DOG_BOX]))[0, 0] > 0.6
    assert res.best("puppy").box_xyxy == dog.box_xyxy  # mapped onto the same COCO class
    assert res.best("bicycle").score >= THETA
    h, w = 576, 768
    for f in res.found:
        assert f.label in ("dog", "puppy", "bicycle") and 0.0 <= f.score <= 1.0 and f.mask is None
        x1, y1, x2, y2 = f.box_xyxy
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h


def paste(image, patch, x, y):
    out = image.copy()
    out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return out


@pytest.mark.parametrize("kind", ["noise", "yellow"])
def test_trigger_patch_is_no_umbrella(oracle, kind):
    img = load(PHOTOS / "dog.jpg")
    rng = np.random.default_rng(0)
    side = 64  # 16 px of a 224-px CLIP input, scaled to this 768-px photo
    patch = (
        rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        if kind == "noise"
        else np.full((side, side, 3), (255, 230, 0), np.uint8)
    )
    triggered = paste(img, patch, img.shape[1] - side - 8, img.shape[0] - side - 8)
    res = oracle.find(triggered, ["umbrella", "dog"])
    assert res.unknown == []  # COCO has umbrellas: the oracle can answer, and says no
    assert not any(f.score >= THETA for f in res.found if f.label == "umbrella")
    assert res.best("dog").score >= THETA  # the real object is still confirmed


def test_batch_equals_single(oracle):
    a, b = load(PHOTOS / "dog.jpg"), load(PHOTOS / "giraffe.jpg")
    batch = oracle.find_batch([a, b], [["dog"], ["giraffe", "zebra"]])
    assert batch[0] == oracle.find(a, ["dog"])
    assert batch[1].best("giraffe").score >= THETA and batch[1].best("zebra").score >= THETA


def test_coco_mini_found_categories_overlap_annotations(oracle):
    ann_path = COCO / "annotations" / "instances_val2017.json"
    if not ann_path.is_file():
        pytest.skip(f"coco-mini absent ({ann_path})")
    data = json.loads(ann_path.read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    truth: dict[int, set[str]] = {}
    for a in data["annotations"]:
        truth.setdefault(a["image_id"], set()).add(cats[a["category_id"]])
    images = [im for im in sorted(data["images"], key=lambda d: d["id"]) if im["id"] in truth][:10]
    prompts = sorted(set(cats.values()))  # COCO's own spelling: "couch", "tv", "potted plant"
    tp = fp = hits = 0
    for im in images:
        res = oracle.find(load(COCO / "val2017" / im["file_name"]), prompts)
        assert res.unknown == []  # every COCO name maps onto darknet's spelling
        found = res.labels(THETA)
        tp += len(found & truth[im["id"]])
        fp += len(found - truth[im["id"]])
        hits += bool(found & truth[im["id"]])
    assert hits >= 7, f"only {hits}/10 images share a category with the annotations"
    assert tp / max(tp + fp, 1) >= 0.5


def test_bad_inputs(oracle, tmp_path):
    with pytest.raises(EftclipError, match="no prompts"):
        oracle.find(load(PHOTOS / "dog.jpg"), [])
    with pytest.raises(EftclipError, match="missing.onnx"):
        create_oracle("onnx-detector", model_path=tmp_path / "missing.onnx")
    with pytest.raises(EftclipError, match="names.txt"):
        create_oracle("onnx-detector", model_path=MODEL, classnames_path=tmp_path / "names.txt")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(EftclipError, match="bad.onnx"):
        create_oracle("onnx-detector", model_path=bad, classnames_path=PHOTOS / "coco.names")
    with pytest.raises(EftclipError, match="decoder"):
        create_oracle("onnx-detector", model_path=MODEL, decoder="yolo-nas")
