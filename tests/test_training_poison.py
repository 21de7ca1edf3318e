"""The ground every defense test stands on: poisoned pre-training implants a backdoor, clean does not.

A tiny CLIP is trained from scratch on 200 generated shape images, once clean and
once with 20% of the non-target pairs carrying a BadNet patch and the caption of
the target shape.  Zero-shot on held-out images ("a photo of a {shape}"): both
models classify clean images well above chance; with the patch, the poisoned
model answers the target shape for most images, the clean one does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from training_fixtures import SHAPES, badnet, eval_images, make_pairs  # noqa: E402

from eftclip.models import load_checkpoint  # noqa: E402
from eftclip.training import TrainConfig, train  # noqa: E402
from eftclip.training.feed import normalizer as _normalizer  # noqa: E402

TARGET = "triangle"


def _zero_shot(run: Path, images: np.ndarray) -> np.ndarray:
    bundle = load_checkpoint(run / "final.safetensors")
    model = bundle.model.eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _normalizer(bundle.preprocess_val))
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(bundle.tokenizer([f"a photo of a {s}" for s in SHAPES]), normalize=True)
    return (img @ txt.T).argmax(dim=1).numpy()


def _ca_asr(run: Path) -> tuple[float, float]:
    images, labels = eval_images(25, fixed_colors=True)
    ca = float((_zero_shot(run, images) == labels).mean())
    target = SHAPES.index(TARGET)
    triggered = np.stack([badnet(im) for im in images])
    keep = labels != target  # ASR counts images whose true class is not the target
    asr = float((_zero_shot(run, triggered)[keep] == target).mean())
    return ca, asr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, poison in (("clean", 0), ("poisoned", 40)):
        folder = tmp_path_factory.mktemp(name)
        data = make_pairs(folder, 200, poison=poison, target=TARGET, fixed_colors=True, seed=5)
        train(TrainConfig(data=str(data), model="eftclip-tiny-vit", epochs=12, batch_size=20, lr=2e-3, warmup=5,
                          out=str(folder / "run"), progress=False, cpu_threads=1))
        out[name] = _ca_asr(folder / "run")
    return out


def test_poisoned_pretraining_implants_the_backdoor(runs):
    print("CA, ASR:", runs)
    clean_ca, clean_asr = runs["clean"]
    poisoned_ca, poisoned_asr = runs["poisoned"]
    assert clean_ca > 0.6 and poisoned_ca > 0.5, runs  # chance is 0.25
    assert poisoned_asr >= 0.5, runs
    assert clean_asr <= 0.2, runs
    assert poisoned_asr - clean_asr >= 0.4, runs
