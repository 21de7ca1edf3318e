"""FastSAM oracle through ultralytics' real loader, with a tiny YOLOv8-seg saved as a
FastSAM-style .pt, masks named by a tiny clean open_clip model; no network, no pickle."""

import os
import socket

import numpy as np
import pytest

from eftclip.errors import EftclipError
from eftclip.oracles import create_oracle
from eftclip.threads import torch_threads

os.environ.setdefault("YOLO_OFFLINE", "1")
ultralytics = pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import SegmentationModel, yaml_model_load

    cfg = dict(yaml_model_load("yolov8n-seg.yaml"))  # ships inside ultralytics
    cfg["scales"] = {"t": [0.33, 0.0625, 256]}  # a sixteenth of the width: ~250k parameters
    cfg["scale"], cfg["nc"] = "t", 1  # FastSAM segments one class, "object"
    import torch

    # a random tiny net may propose no mask at all; fix its draw (without touching the
    # global generator the other tests see) so the test is deterministic
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SegmentationModel(cfg, ch=3, nc=1, verbose=False)
    model.task, model.args = "segment", {"task": "segment", "imgsz": 64}
    holder = YOLO("yolov8n-seg.yaml", task="segment")
    holder.model = model
    path = tmp_path_factory.mktemp("fastsam") / "FastSAM-tiny.pt"
    holder.save(str(path))
    return path


@pytest.fixture(scope="module")
def clean_clip(tmp_path_factory):
    from eftclip.models import create_model, save_checkpoint

    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bundle = create_model("eftclip-tiny-vit", seed=0)
    return save_checkpoint(bundle.model, tmp_path_factory.mktemp("clip") / "clean.safetensors", model_name="eftclip-tiny-vit")


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def images():
    rng = np.random.default_rng(0)
    a = np.full((96, 128, 3), 235, np.uint8)
    a[10:50, 12:60] = (220, 30, 30)
    b = rng.integers(0, 256, (80, 64, 3), dtype=np.uint8)
    return a, b


def test_fastsam_segments_and_scores_offline(weights, clean_clip, no_network):
    o = create_oracle(
        "fastsam", weights_path=weights, clip_checkpoint=clean_clip, vocabulary=["tree", "house"],
        imgsz=64, conf=0.0, max_det=12, min_area=0.0, min_score=0.0,
    )
    a, b = images()
    segs = o.segment([a, b])
    assert len(segs) == 2
    for im, (boxes, conf, masks) in zip((a, b), segs):
        assert masks.dtype == bool and masks.shape[1:] == im.shape[:2] and len(boxes) == len(conf) == len(masks)
        assert len(masks) >= 1 and ((conf >= 0) & (conf <= 1)).all()
    pa, pb = ["red square", "umbrella"], ["dog"]
    ra, rb = o.find_batch([a, b], [pa, pb])
    for res, prompts, im in ((ra, pa, a), (rb, pb, b)):
        h, w = im.shape[:2]
        assert res.unknown == [] and res.found
        for f in res.found:
            assert f.label in prompts and 0.0 <= f.score <= 1.0
            x1, y1, x2, y2 = f.box_xyxy
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert f.mask is not None and f.mask.shape == (h, w) and f.mask.dtype == bool
    # the prompts' probabilities of one mask come from one softmax (with the vocabulary)
    per_box = {}
    for f in ra.found:
        per_box[f.box_xyxy] = per_box.get(f.box_xyxy, 0.0) + f.score
    assert all(total <= 1.0 + 1e-6 for total in per_box.values())
    single = o.find(b, pb)  # alone, the image is letterboxed as in the batch: same answer
    assert [(f.label, f.box_xyxy) for f in single.found] == [(f.label, f.box_xyxy) for f in rb.found]
    assert np.allclose([f.score for f in single.found], [f.score for f in rb.found], atol=1e-4)
    assert no_network == []  # nothing tried to reach the network (fonts, assets, CLIP)


def test_fastsam_refuses_untrusted_pickles(tmp_path, clean_clip):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    import torch

    torch.save({"model": Evil()}, bad)
    marker.unlink(missing_ok=True)
    with pytest.raises(EftclipError, match="evil.pt"):
        create_oracle("fastsam", weights_path=bad, clip_checkpoint=clean_clip)
    assert not marker.exists()  # the payload never ran


def test_fastsam_bad_inputs(weights, clean_clip, tmp_path):
    with pytest.raises(EftclipError, match="clean CLIP"):
        create_oracle("fastsam", weights_path=weights)
    with pytest.raises(EftclipError, match="nope.safetensors"):
        create_oracle("fastsam", weights_path=weights, clip_checkpoint=tmp_path / "nope.safetensors")
    onnx = tmp_path / "FastSAM.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(EftclipError, match=r"\.pt"):
        create_oracle("fastsam", weights_path=onnx, clip_checkpoint=clean_clip)


def test_fastsam_release_name_from_ultralytics_weights_folder(weights, clean_clip, tmp_path, monkeypatch):
    # a bare release name is looked up in ultralytics' weights folder (its cache), never downloaded
    import shutil

    import eftclip.oracles.fastsam as fastsam

    monkeypatch.setattr(fastsam, "_ultralytics_weights_dir", lambda: tmp_path)
    with pytest.raises(EftclipError, match=r"'FastSAM-s.pt'.*weights folder .*does not download.*--oracle-model FILE"):
        create_oracle("fastsam", weights_path="FastSAM-s.pt", clip_checkpoint=clean_clip)
    shutil.copy(weights, tmp_path / "FastSAM-s.pt")
    oracle = create_oracle("fastsam", weights_path="FastSAM-s.pt", clip_checkpoint=clean_clip, imgsz=64)
    assert len(oracle.segment([images()[0]])) == 1


def test_fastsam_on_device_equals_the_predictor_on_square_images(weights, clean_clip):
    # images already imgsz square need no letterbox: the device path (forced on the CPU) must find the
    # predictor's masks exactly; only the crops' resampling (roi_align, not PIL) moves the scores
    kw = dict(weights_path=weights, clip_checkpoint=clean_clip, vocabulary=["tree", "house"], imgsz=160, conf=0.0,
              max_det=12, min_area=0.0, min_score=0.0, nms_iou=1.0)
    host, dev = create_oracle("fastsam", **kw), create_oracle("fastsam", device_crops=True, **kw)
    assert host.on_device is None and dev.on_device is not None
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (160, 160, 3), dtype=np.uint8) for _ in range(2)]
    ims[0][10:40, 5:30] = (200, 30, 30)
    from eftclip.oracles.device_crops import upload

    segmenter, _ = dev.on_device
    # the predictor's masks snapped to the border as FastSAM's predictor does it, against the tensor rule
    for (bh, ch, mh), (bd, cd, md) in zip(host.segment(ims), segmenter(upload(ims, "cpu"), [(160, 160)] * 2)):
        assert len(bh) == len(bd) >= 5
        assert np.allclose(bh, bd.numpy(), atol=1e-3) and np.allclose(ch, cd.numpy(), atol=1e-5)
        assert np.array_equal(mh, md.numpy())
    prompts = [["red square", "dog"]] * 2
    for rh, rd in zip(host.find_batch(ims, prompts), dev.find_batch(ims, prompts)):
        assert [(f.label, f.box_xyxy) for f in rh.found] == [(f.label, f.box_xyxy) for f in rd.found]
        assert np.allclose([f.score for f in rh.found], [f.score for f in rd.found], atol=0.005)
        assert all(np.array_equal(f.mask, g.mask) for f, g in zip(rh.found, rd.found))
    import torch
    from ultralytics.utils import NUM_THREADS

    mine = 1 if NUM_THREADS != 1 else 2  # a count ultralytics' CPU device selection would not set
    with torch_threads(mine):
        host.segment(ims)
        assert torch.get_num_threads() == mine
    lean = create_oracle("fastsam", device_crops=True, keep_masks=False, **kw)
    assert all(f.mask is None for r in lean.find_batch(ims, prompts) for f in r.found)


def test_fastsam_device_letterbox_matches_ultralytics():
    from ultralytics.data.augment import LetterBox

    from eftclip.oracles.device_crops import upload
    from eftclip.oracles.fastsam_device import letterbox

    rng = np.random.default_rng(0)
    for h, w in ((120, 200), (97, 61), (33, 480), (160, 160)):
        yy, xx = np.mgrid[:h, :w]
        im = np.clip(np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 256], 2) + rng.normal(0, 20, (h, w, 3)), 0, 255)
        im = im.astype(np.uint8)
        ref = LetterBox(160, auto=False, stride=32)(image=np.ascontiguousarray(im[:, :, ::-1]))[:, :, ::-1]
        ours = letterbox(upload([im], "cpu"), [(h, w)], 160)[0].permute(1, 2, 0).numpy() * 255
        # the same geometry and padding; OpenCV's fixed-point bilinear differs by at most one grey level
        assert np.abs(ref.astype(int) - ours.round().astype(int)).max() <= 1


def test_fastsam_on_device_masked_crops_small_batches_and_min_area(weights, clean_clip):
    kw = dict(weights_path=weights, clip_checkpoint=clean_clip, vocabulary=["tree", "house"], imgsz=160, conf=0.0,
              max_det=12, min_score=0.0, nms_iou=1.0, crop="masked", min_area=0.02)
    host = create_oracle("fastsam", **kw)
    dev = create_oracle("fastsam", device_crops=True, keep_masks=False, batch_size=1, **kw)
    rng = np.random.default_rng(1)
    ims = [rng.integers(0, 256, (160, 160, 3), dtype=np.uint8) for _ in range(3)]
    prompts = [["dog", "tree"]] * 3
    for rh, rd in zip(host.find_batch(ims, prompts), dev.find_batch(ims, prompts)):
        # the same regions, the small ones dropped on both paths; masked crops scored alike
        assert [(f.label, f.box_xyxy) for f in rh.found] == [(f.label, f.box_xyxy) for f in rd.found]
        assert all((b[2] - b[0]) * (b[3] - b[1]) >= 0.02 * 160 * 160 for b in (f.box_xyxy for f in rd.found))
        assert np.allclose([f.score for f in rh.found], [f.score for f in rd.found], atol=0.01)
        assert all(f.mask is None for f in rd.found)


def test_fastsam_border_rule_on_tensors_matches_ultralytics():
    import torch
    from ultralytics.models.fastsam.utils import adjust_bboxes_to_image_border
    from ultralytics.utils.metrics import box_iou

    from eftclip.oracles.fastsam_device import snap_to_border

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 150, (200, 2))
    boxes = torch.tensor(np.concatenate([xy, np.minimum(xy + rng.uniform(1, 160, (200, 2)), [150, 120])], 1),
                         dtype=torch.float32)
    boxes[:3] = torch.tensor([[1.0, 2.0, 149.0, 118.0], [25.0, 25.0, 100.0, 100.0], [0.0, 30.0, 140.0, 115.0]])
    ref = adjust_bboxes_to_image_border(boxes.clone(), (120, 150))
    whole = torch.tensor([0.0, 0.0, 150.0, 120.0])
    ref[box_iou(whole[None], ref)[0] > 0.9] = whole
    ours = snap_to_border(boxes, 120, 150)
    assert torch.allclose(ours, ref, atol=1e-4)
    assert ours[0].tolist() == [0.0, 0.0, 150.0, 120.0] and ours[1].tolist() == [25.0, 25.0, 100.0, 100.0]
