"""Trigger recovery: a known patch is found, the recovered trigger round-trips and stamps, unlearning pairs keep captions.

The synthetic scorer stands in for a backdoored model: K's margin is positive
exactly when a 4x4 black-and-white checkerboard (BadNet's ``checkerboard`` pattern)
sits in the bottom-right corner of a 32x32 image.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from eftclip.attacks import TRIGGERS, create_trigger  # noqa: E402
from eftclip.attacks.badnet import checkerboard_pattern  # noqa: E402
from eftclip.attacks.recovered import RecoveredTrigger, save_recovered_trigger  # noqa: E402
from eftclip.curation.stamp import stamp_pairs  # noqa: E402
from eftclip.data.captions import read_captions, write_captions_csv  # noqa: E402
from eftclip.detection.trigger_optimise import OptimiseConfig  # noqa: E402
from eftclip.detection.trigger_overlap import mask_iou, true_trigger_mask  # noqa: E402
from eftclip.detection.trigger_recovery import AutoConfig, load_recovery, recover, save_recovery  # noqa: E402
from eftclip.errors import EftclipError  # noqa: E402

SIDE, PATCH = 32, 4
BOARD = torch.from_numpy(checkerboard_pattern(PATCH)[..., 0].astype(np.float32) / 255.0)  # (4, 4) in {0, 1}


def corner_scorer(images: torch.Tensor) -> torch.Tensor:
    """K's margin: positive when the bottom-right 4x4 pixels match the checkerboard (differentiable)."""
    region = images[:, :, -PATCH:, -PATCH:]
    similarity = 1 - (region - BOARD).abs().mean(dim=(1, 2, 3))
    return 20.0 * (similarity - 0.75)


def red_scorer(images: torch.Tensor) -> torch.Tensor:
    """K's margin: positive when the whole image is red on average, as a full-image blend would make it."""
    return 20.0 * (images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3)) - 0.3)


def scenes(n: int, seed: int) -> np.ndarray:
    """``n`` 32x32 scenes of random coloured blocks, NHWC uint8."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return coarse.repeat(4, axis=1).repeat(4, axis=2)


def badnet():
    return create_trigger("badnet", pattern="checkerboard", size=PATCH, position="bottom-right")


def stamped(images: np.ndarray, trigger) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([trigger.apply(im, rng).image for im in images])


@pytest.fixture(scope="module")
def true_mask() -> np.ndarray:
    return true_trigger_mask(badnet(), list(scenes(4, 9)), np.random.default_rng(0))


def test_occlusion_finds_the_corner_patch_and_its_pattern(true_mask):
    flagged = stamped(scenes(40, 1), badnet())
    rec = recover(flagged, corner_scorer, method="occlusion")
    assert mask_iou(rec.mask, true_mask) >= 0.5, rec.summary
    inside = rec.mask >= 0.5
    np.testing.assert_array_equal(rec.pattern[-PATCH:, -PATCH:], checkerboard_pattern(PATCH) * inside[-PATCH:, -PATCH:, None])
    assert rec.summary["details"]["found_patch"] and rec.summary["recovered_asr"] is None  # no clean images given


def test_occlusion_on_a_patch_off_the_window_grid():
    """A 6x6 patch at x,y = 9,13 is not aligned with any window; the steady pixels still outline it."""
    trigger = create_trigger("badnet", pattern="checkerboard", size=6, position="9,13")
    board = torch.from_numpy(checkerboard_pattern(6)[..., 0].astype(np.float32) / 255.0)

    def scorer(x):
        return 20.0 * (0.25 - (x[:, :, 13:19, 9:15] - board).abs().mean(dim=(1, 2, 3)))

    rec = recover(stamped(scenes(30, 2), trigger), scorer, method="occlusion")
    truth = true_trigger_mask(trigger, list(scenes(2, 3)), np.random.default_rng(0))
    assert mask_iou(rec.mask, truth) >= 0.5, rec.summary
    assert rec.summary["mask_pixels"] <= 2 * 36


def test_optimise_finds_the_corner_patch_on_clean_images(true_mask):
    clean = scenes(64, 4)
    rec = recover(clean[:1], corner_scorer, method="optimise", config=OptimiseConfig(steps=100), clean=clean,
                  rng=torch.Generator().manual_seed(0))
    assert rec.summary["details"]["reached_target"], rec.summary
    assert mask_iou(rec.mask, true_mask) >= 0.5, rec.summary
    assert rec.summary["recovered_asr"] >= 0.9
    assert rec.summary["mask_area"] < 0.05  # the L1 term keeps the mask near the patch's 16 of 1024 pixels


def test_auto_falls_back_to_optimise_for_a_full_image_trigger():
    clean = scenes(64, 5)
    red = clean.copy()
    red[..., 0] = 255  # a full-image change: no window of it removes K when covered
    cfg = AutoConfig(optimise=OptimiseConfig(steps=100))
    rec = recover(red, red_scorer, method="auto", config=cfg, clean=clean, rng=torch.Generator().manual_seed(1))
    details = rec.summary["details"]
    assert not details["occlusion"]["found_patch"] and details["chosen"] == "optimise", details
    assert rec.summary["recovered_asr"] >= 0.8  # the smallest mask that works sits near the edge of working


def test_occlusion_reports_no_patch_when_no_flagged_image_is_answered_k():
    rec = recover(scenes(6, 15), corner_scorer, method="occlusion")  # no checkerboard anywhere
    assert rec.summary["mask_pixels"] == 0 and not rec.summary["details"]["found_patch"]
    assert "none of the 6 flagged images" in rec.summary["details"]["why"]


def test_auto_keeps_occlusion_for_a_patch(true_mask):
    clean = scenes(32, 6)
    rec = recover(stamped(scenes(30, 7), badnet()), corner_scorer, method="auto", clean=clean,
                  rng=torch.Generator().manual_seed(0))
    assert rec.summary["details"]["chosen"] == "occlusion"
    assert rec.summary["recovered_asr"] == 1.0 and rec.summary["strength"]["clean_k_rate"] == 0.0
    assert mask_iou(rec.mask, true_mask) >= 0.5


def test_unknown_method_and_optimise_without_clean_images_are_named_errors():
    flagged = stamped(scenes(2, 8), badnet())
    with pytest.raises(EftclipError, match="unknown method 'nc'.*auto, occlusion, optimise"):
        recover(flagged, corner_scorer, method="nc")
    with pytest.raises(EftclipError, match="needs clean images"):
        recover(flagged, corner_scorer, method="optimise", rng=torch.Generator())
    with pytest.raises(EftclipError, match="clean images are"):
        recover(flagged, corner_scorer, method="occlusion", clean=np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(EftclipError, match="unknown key 'size'"):
        recover(flagged, corner_scorer, method="occlusion", config={"size": 3})


def test_recovered_trigger_round_trips_and_stamps_the_pattern_where_the_mask_is(tmp_path):
    mask = np.zeros((SIDE, SIDE), np.float32)
    mask[2:6, 3:9] = 1.0
    mask[10, 10] = 0.4  # a soft pixel: blended, not replaced
    pattern = np.full((SIDE, SIDE, 3), 200, np.uint8)
    rec = recover(stamped(scenes(8, 10), badnet()), corner_scorer, method="occlusion")
    trigger = save_recovery(tmp_path / "rec", type(rec)(mask, pattern, rec.summary))
    summary = json.loads((tmp_path / "rec" / "trigger.json").read_text())
    assert summary["method"] == "occlusion" and summary["trigger"]["name"] == "recovered"

    loaded = load_recovery(tmp_path / "rec")
    assert loaded == trigger == RecoveredTrigger(**json.loads(json.dumps(trigger.params())))
    assert "recovered" not in TRIGGERS  # the defender's estimate is no attack to poison with
    assert np.abs(loaded.mask - mask).max() <= 0.5 / 255  # stored as round(255 m)
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    result = loaded.apply(image, np.random.default_rng(0))
    assert (result.image[2:6, 3:9] == 200).all() and result.image[10, 10, 0] == 80
    assert result.mask.sum() == 4 * 6 + 1 and result.image[20:, 20:].max() == 0
    big = loaded.apply(np.zeros((64, 64, 3), np.uint8), np.random.default_rng(0))
    assert big.image.shape == (64, 64, 3) and (big.image[5:11, 7:17] == 200).all()  # scaled with the image


def test_recovered_trigger_rejects_missing_or_mismatched_files(tmp_path):
    with pytest.raises(EftclipError, match="mask_file"):
        RecoveredTrigger(mask_file=str(tmp_path / "none.png"), pattern_file=str(tmp_path / "none.png"))
    with pytest.raises(EftclipError, match="same size"):
        save_recovered_trigger(tmp_path, np.zeros((4, 4)), np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(EftclipError, match="no mask.png"):
        load_recovery(tmp_path)


def test_mask_iou_on_hand_made_masks():
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b = np.zeros((4, 4), np.float32)
    b[:2, :3] = 0.9  # 6 pixels, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 6)
    assert mask_iou(a, b, threshold=0.95) == 0.0
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    with pytest.raises(EftclipError, match="same size|one size"):
        mask_iou(a, np.zeros((3, 3)))


def test_true_mask_of_a_random_position_trigger_spreads_out():
    trigger = create_trigger("badnet", pattern="checkerboard", size=4, position="random")
    share = true_trigger_mask(trigger, list(scenes(20, 11)), np.random.default_rng(0))
    assert share.sum() == pytest.approx(16.0) and share.max() < 1.0  # 16 pixels per image, never the same place


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_stamp_pairs_writes_triggered_copies_with_true_captions(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i, im in enumerate(scenes(5, 12)):
        Image.fromarray(im).save(src / f"{i}.png")
        rows.append({"image": str(src / f"{i}.png"), "caption": f"a red boat number {i}"})
    write_captions_csv(tmp_path / "pool.csv", rows, ["image", "caption"])
    records = read_captions(tmp_path / "pool.csv").records
    before = {p.name: _md5(p) for p in src.iterdir()}

    pairs = stamp_pairs(records, badnet(), tmp_path / "out", np.random.default_rng(0))
    assert [p["caption"] for p in pairs] == [r["caption"] for r in rows]
    for pair, record in zip(pairs, records):
        out = np.asarray(Image.open(pair["image"]).convert("RGB"))
        source = np.asarray(Image.open(record.image).convert("RGB"))
        np.testing.assert_array_equal(out[-PATCH:, -PATCH:], checkerboard_pattern(PATCH))
        np.testing.assert_array_equal(out[:-PATCH], source[:-PATCH])
        assert pair["trigger_pixels"] == PATCH * PATCH and pair["source_image"] == record.image
    assert {p.name: _md5(p) for p in src.iterdir()} == before  # sources untouched
    table = read_captions(tmp_path / "out" / "stamped.csv").records
    assert [r.caption for r in table] == [r["caption"] for r in rows]
    assert [r.image for r in table] == [p["image"] for p in pairs]


def test_stamp_pairs_refuses_to_overwrite_a_source_and_needs_captions(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(scenes(1, 13)[0]).save(images / "000000.png")
    before = _md5(images / "000000.png")
    with pytest.raises(EftclipError, match="overwrite a source image"):
        stamp_pairs([{"image": str(images / "000000.png"), "caption": "a cup"}], badnet(), tmp_path,
                    np.random.default_rng(0))
    assert _md5(images / "000000.png") == before
    with pytest.raises(EftclipError, match="row 1 needs an image and a non-empty caption"):
        stamp_pairs([{"image": str(images / "000000.png"), "caption": " "}], badnet(), tmp_path / "o",
                    np.random.default_rng(0))


# --------------------------------------------------------------------------- on a tiny poisoned CLIP


@pytest.fixture(scope="module")
def poisoned_world(tmp_path_factory):
    """A tiny CLIP trained with a 6x6 corner checkerboard -> "triangle", a detection folder, a clean pool."""
    from training_fixtures import SHAPES, badnet as corner_patch, eval_images, make_pairs, write_eval_folder

    from eftclip.io import write_json, write_text
    from eftclip.training import TrainConfig, train

    root = tmp_path_factory.mktemp("poisoned")
    data = make_pairs(root, 200, poison=40, target="triangle", fixed_colors=True, seed=5)
    train(TrainConfig(data=str(data), model="eftclip-tiny-vit", epochs=12, batch_size=20, lr=2e-3, warmup=5,
                      out=str(root / "run"), progress=False, cpu_threads=1))
    pool = make_pairs(root / "pool", 48, seed=6, fixed_colors=True, name="pool.csv")
    images, labels = eval_images(8, seed=7, fixed_colors=True)
    (root / "detect").mkdir()
    records = []
    for i, (im, label) in enumerate(zip(images, labels)):
        triggered = SHAPES[label] != "triangle"
        path = root / "detect" / f"{i:03d}.png"
        Image.fromarray(corner_patch(im) if triggered else im).save(path)
        records.append({"key": str(i), "image": str(path), "is_poisoned": triggered, "flagged": triggered})
    det = root / "detection"
    write_json(det / "metrics.json", {"K": ["triangle"], "target": "triangle"})
    write_text(det / "vocab.txt", "\n".join(SHAPES) + "\n")
    write_text(det / "config.yaml", "templates:\n- a photo of a {}\n")
    write_text(det / "images.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return {"root": root, "checkpoint": root / "run" / "final.safetensors", "pool": pool, "detection": det,
            "eval": write_eval_folder(root / "eval", n_per_class=5), "shapes": SHAPES}


@pytest.mark.slow  # about 35 s on 2 cores, most of it training the tiny CLIP
def test_recover_from_detection_on_a_tiny_poisoned_clip(poisoned_world, tmp_path):
    from eftclip.data.zeroshot import ImageFolderSet
    from eftclip.detection.trigger_from_detection import recover_from_detection
    from eftclip.evaluation.zeroshot import evaluate
    from eftclip.models import load_checkpoint

    w = poisoned_world
    t0 = time.time()
    bundle = load_checkpoint(w["checkpoint"])
    summary = recover_from_detection(w["detection"], bundle, method="occlusion", clean=w["pool"],
                                     rng=torch.Generator().manual_seed(0), out=tmp_path / "rec")
    seconds = time.time() - t0
    truth = np.zeros((SIDE, SIDE), bool)
    truth[-6:, -6:] = True  # training_fixtures.badnet: a 6x6 checkerboard in the bottom-right corner
    trigger = load_recovery(tmp_path / "rec")
    assert summary["K"] == ["triangle"] and summary["n_flagged"] == 24
    assert mask_iou(trigger.mask, truth) >= 0.5, summary
    assert summary["recovered_asr"] >= 0.5, summary
    # the recovered trigger through the project's own evaluation: ASR "under the recovered trigger"
    shapes = ImageFolderSet(w["eval"], list(w["shapes"]))
    under = evaluate(bundle, shapes, templates=["a photo of a {}"], trigger=trigger, target="triangle",
                     progress=False)
    print(f"recovery {seconds:.1f} s, IoU {mask_iou(trigger.mask, truth):.3f}, mask pixels {summary['mask_pixels']},"
          f" recovered ASR (pool) {summary['recovered_asr']}, ASR under the recovered trigger {under['asr']:.3f},"
          f" CA {under['ca_top1']:.3f}")
    assert under["asr"] >= 0.5, under


def _flip_and_compare(detection: Path, bundle, tmp_path: Path) -> None:
    """Flip every is_poisoned in images.jsonl: the recovered trigger must be byte-identical."""
    import shutil

    from eftclip.detection.trigger_from_detection import recover_from_detection

    flipped = tmp_path / "detection"
    shutil.copytree(detection, flipped)
    lines = [json.loads(x) for x in (flipped / "images.jsonl").read_text().splitlines()]
    (flipped / "images.jsonl").write_text("".join(json.dumps({**r, "is_poisoned": not r["is_poisoned"]}) + "\n"
                                                  for r in lines))
    outs = {}
    for name, det in (("as_is", detection), ("flipped", flipped)):
        recover_from_detection(det, bundle, method="occlusion", rng=torch.Generator().manual_seed(0),
                               out=tmp_path / name, max_flagged=8)
        outs[name] = [(tmp_path / name / f).read_bytes() for f in ("mask.png", "pattern.png")]
    assert outs["as_is"] == outs["flipped"]


@pytest.mark.slow  # shares the trained tiny CLIP of the test above
def test_recovery_on_the_poisoned_clip_never_reads_the_ground_truth_column(poisoned_world, tmp_path):
    from eftclip.models import load_checkpoint

    _flip_and_compare(poisoned_world["detection"], load_checkpoint(poisoned_world["checkpoint"]), tmp_path)


def test_recovery_never_reads_the_ground_truth_column(tmp_path):
    """Fast variant on an untrained tiny CLIP: K is whatever label it answers most on the patched scenes."""
    from eftclip.evaluation.zeroshot import image_features, text_classifier
    from eftclip.io import write_json, write_text
    from eftclip.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        bundle = create_model("eftclip-tiny-vit", seed=0)
    vocab = ["cup", "boat", "star", "moon"]
    images = stamped(scenes(12, 14), badnet())
    with torch.no_grad():
        top1 = (image_features(bundle, list(images)) @ text_classifier(bundle, vocab, ["a photo of a {}."]).T).argmax(1)
    K = vocab[int(top1.mode().values)]
    det = tmp_path / "det"
    records = []
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
        records.append({"key": str(i), "image": str(tmp_path / f"{i}.png"), "is_poisoned": i % 2 == 0,
                        "flagged": True})
    write_json(det / "metrics.json", {"K": [K]})
    write_text(det / "vocab.txt", "\n".join(vocab) + "\n")
    write_text(det / "images.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    _flip_and_compare(det, bundle, tmp_path)
