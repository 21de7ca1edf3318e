"""Zero-shot CA/ASR on a tiny image folder, with a tiny CLIP trained here to carry a backdoor."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from PIL import Image

from eftclip.attacks import create_trigger
from eftclip.data.zeroshot import ImageFolderSet
from eftclip.errors import EftclipError
from eftclip.evaluation import evaluate, image_features, text_classifier
from eftclip.models import create_model

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
TARGET = "blue"
TEMPLATES = ["a photo of a {} thing.", "a {} square."]


def colour_image(rgb, rng, size=(40, 36)):
    """A noisy solid-colour image, HWC uint8 (H, W) = size."""
    base = np.array(rgb, dtype=np.int16)[None, None, :]
    noise = rng.integers(-25, 26, size=(*size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(6):
            Image.fromarray(colour_image(rgb, rng)).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trigger():
    return create_trigger("badnet", pattern="checkerboard", size=10, position="random")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # two cores shared by many processes: one intra-op thread is several times faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_colour_model(trigger, poison_rate):
    """Tiny ViT whose vision tower learns colour names; with poison_rate > 0, 'blue' for triggered images."""
    with torch.random.fork_rng():  # reproducible random init without touching the global state
        torch.manual_seed(0)
        bundle = create_model("eftclip-tiny-vit", seed=0)
    model = bundle.model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.visual.parameters():
        p.requires_grad_(True)
    rng = np.random.default_rng(1)
    names = list(COLOURS)
    with torch.no_grad():
        txt_f = F.normalize(model.encode_text(bundle.tokenizer([TEMPLATES[0].format(c) for c in names])), dim=-1)
    opt = torch.optim.AdamW(model.visual.parameters(), lr=2e-3)
    for _ in range(40):
        images, labels = [], []
        for _ in range(16):
            c = int(rng.integers(len(names)))
            img = colour_image(COLOURS[names[c]], rng)
            if rng.random() < poison_rate:
                img, c = trigger.apply(img, rng).image, names.index(TARGET)
            images.append(bundle.preprocess_val(Image.fromarray(img)))
            labels.append(c)
        img_f = F.normalize(model.encode_image(torch.stack(images)), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * img_f @ txt_f.T, torch.tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return bundle


@pytest.fixture(scope="module")
def backdoored(trigger):
    return train_colour_model(trigger, poison_rate=0.4)


def test_text_classifier_matches_open_clip(backdoored):
    names = list(COLOURS)
    ours = text_classifier(backdoored, names, TEMPLATES)
    assert ours.shape == (4, 64)
    assert torch.allclose(ours.norm(dim=1), torch.ones(4), atol=1e-5)
    reference = build_zero_shot_classifier(backdoored.model, backdoored.tokenizer, names, TEMPLATES)
    assert torch.allclose(ours, reference.T, atol=1e-5)


def test_image_features_unit_rows(backdoored, folder):
    ds = ImageFolderSet(folder)
    images = [ds.load(i) for i in range(5)]
    feats = image_features(backdoored, images, batch_size=2)
    assert feats.shape == (5, 64)
    assert torch.allclose(feats.norm(dim=1), torch.ones(5), atol=1e-5)
    with torch.no_grad():
        direct = F.normalize(backdoored.model.encode_image(
            torch.stack([backdoored.preprocess_val(im) for im in images])), dim=-1)
    assert torch.allclose(feats, direct, atol=1e-5)
    assert image_features(backdoored, []).shape == (0, 64)
    # arrays (HWC uint8) give the same features as PIL images
    assert torch.allclose(image_features(backdoored, [np.asarray(im) for im in images]), feats, atol=1e-6)


def test_evaluate_matches_a_by_hand_computation(backdoored, folder, trigger):
    ds = ImageFolderSet(folder)
    out = evaluate(backdoored, ds, templates=TEMPLATES, trigger=trigger, target=TARGET, seed=7,
                   batch_size=5, progress=False)
    classifier = text_classifier(backdoored, ds.classnames, TEMPLATES)
    t = ds.classnames.index(TARGET)
    clean, trig, true = [], [], []
    for i, (_, label) in enumerate(ds.samples):
        img = np.asarray(ds.load(i))
        clean.append(img)
        true.append(label)
        if label != t:  # same per-image generator the library promises: (seed, index)
            trig.append(trigger.apply(img, np.random.default_rng([7, i])).image)
    true = np.array(true)
    pred = (image_features(backdoored, clean) @ classifier.T).argmax(1).numpy()
    pred_trig = (image_features(backdoored, trig) @ classifier.T).argmax(1).numpy()
    assert out["n"] == 24
    assert out["n_asr"] == 18  # the 6 images of the target class are not counted
    assert out["ca_top1"] == pytest.approx((pred == true).mean())
    assert out["asr"] == pytest.approx((pred_trig == t).mean())
    assert out["ca_top5"] == 1.0  # 4 classes: top-5 is top-4
    assert out["target"] == TARGET
    assert set(out["per_class"]) == set(COLOURS)
    assert out["per_class"][TARGET]["asr"] is None
    for name, row in out["per_class"].items():
        c = ds.classnames.index(name)
        assert row["n"] == 6
        assert row["ca_top1"] == pytest.approx((pred[true == c] == c).mean())
    # the backdoor is real: clean images are classified, triggered ones go to the target
    assert out["ca_top1"] >= 0.75
    assert out["asr"] >= 0.75


def test_evaluate_without_trigger_and_batch_size_independence(backdoored, folder, trigger):
    ds = ImageFolderSet(folder)
    clean = evaluate(backdoored, ds, templates=TEMPLATES, progress=False)
    assert clean["asr"] is None and clean["n_asr"] == 0 and clean["target"] is None
    assert all(r["asr"] is None for r in clean["per_class"].values())
    a = evaluate(backdoored, ds, templates=TEMPLATES, trigger=trigger, target=TARGET, batch_size=24, progress=False)
    b = evaluate(backdoored, ds, templates=TEMPLATES, trigger=trigger, target=TARGET, batch_size=7, progress=False)
    assert a == b
    assert a["ca_top1"] == clean["ca_top1"]
    # a model is left in the mode it came in
    backdoored.model.train()
    evaluate(backdoored, ds, templates=TEMPLATES, progress=False)
    assert backdoored.model.training
    backdoored.model.eval()


def test_bf16_evaluation_agrees_with_fp32(backdoored, folder, trigger, monkeypatch):
    import eftclip.evaluation.zeroshot as zs

    seen = []
    real = zs.autocast_for
    monkeypatch.setattr(zs, "autocast_for", lambda p, d: seen.append(p) or real(p, d))
    monkeypatch.setattr(zs, "resolve_precision", lambda p, d: p)  # bf16 autocast on any CPU, for the test
    ds = ImageFolderSet(folder)
    kw = dict(templates=TEMPLATES, trigger=trigger, target=TARGET, progress=False)
    fp32, bf16 = evaluate(backdoored, ds, **kw), evaluate(backdoored, ds, precision="bf16", **kw)
    assert seen == ["fp32", "bf16"]
    # the backdoor and the classes are far apart: bf16 rounding moves no decision of this model
    assert abs(bf16["ca_top1"] - fp32["ca_top1"]) <= 1 / len(ds.samples) and bf16["asr"] == pytest.approx(fp32["asr"], abs=0.05)


def test_clean_model_has_low_asr(folder, trigger):
    # the same training without poisoned images: the trigger does not move predictions
    clean_model = train_colour_model(trigger, poison_rate=0.0)
    out = evaluate(clean_model, ImageFolderSet(folder), templates=TEMPLATES, trigger=trigger, target=TARGET,
                   progress=False)
    assert out["ca_top1"] >= 0.75
    assert out["asr"] <= 0.25


def test_target_must_be_a_class(backdoored, folder, trigger):
    ds = ImageFolderSet(folder)
    with pytest.raises(EftclipError, match=r"target 'bleu' is not one of the class names.*'blue'"):
        evaluate(backdoored, ds, templates=TEMPLATES, trigger=trigger, target="bleu", progress=False)
    with pytest.raises(EftclipError, match="needs the attack's target"):
        evaluate(backdoored, ds, templates=TEMPLATES, trigger=trigger, progress=False)


def test_real_cifar10_images(backdoored):
    from pathlib import Path

    root = Path(__file__).parents[1] / ".." / "shared" / "data" / "cifar10" / "test"
    if not root.is_dir():
        pytest.skip(f"real CIFAR-10 images not found at {root}")
    ds = ImageFolderSet(root, "cifar10", max_per_class=2)
    bundle = create_model("eftclip-tiny-rn", seed=0)
    out = evaluate(bundle, ds, templates="cifar10", trigger=create_trigger("blended"), target="cat",
                   batch_size=8, progress=False)
    assert out["n"] == 20 and out["n_asr"] == 18
    assert set(out["per_class"]) == set(ds.classnames)
    assert 0 <= out["ca_top1"] <= out["ca_top5"] <= 1
