"""The Objective seam: named terms summed into the loss, the clean-feature anchor, the non-finite guard."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from training_fixtures import make_pairs  # noqa: E402

from eftclip.cli import main as cli_main  # noqa: E402
from eftclip.errors import EftclipError  # noqa: E402
from eftclip.models import load_checkpoint, read_state_dict  # noqa: E402
from eftclip.training import FinetuneConfig, TrainConfig, finetune, train  # noqa: E402
from eftclip.training.losses import CleanClipLoss, make_clip_loss  # noqa: E402
from eftclip.training.objectives import (  # noqa: E402
    OBJECTIVES,
    CleanClip,
    Contrastive,
    ObjectiveContext,
    build_objectives,
    total_terms,
)

MODEL = "eftclip-tiny-vit"
FAST = dict(progress=False, cpu_threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"), 64, seed=2)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("pre") / "run"
    train(TrainConfig(data=str(data), model=MODEL, epochs=4, batch_size=16, lr=2e-3, warmup=4, out=str(out), **FAST))
    return out / "final.safetensors"


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_total_terms_weigh_and_sum_every_objective_in_order():
    clip = make_clip_loss(local_loss=True, gather_with_grad=True, rank=0, world_size=1)
    feats = {"image": _unit(8, 16, 0), "text": _unit(8, 16, 1), "aug_image": _unit(8, 16, 2),
             "aug_text": _unit(8, 16, 3), "logit_scale": torch.tensor(10.0)}
    eda = None  # views only; forward never reads them
    clean = CleanClip(clip, clip_weight=0.7, inmodal_weight=0.3, eda=eda)
    terms = total_terms([clean], feats)
    reference = CleanClipLoss(clip, clip_weight=0.7, inmodal_weight=0.3)(
        feats["image"], feats["text"], feats["logit_scale"], aug_image=feats["aug_image"], aug_text=feats["aug_text"])
    # the same float operations in the same order as the loss module's own total
    assert torch.equal(terms["loss"], reference["loss"])
    assert set(terms) == {"multimodal", "inmodal_image", "inmodal_text", "inmodal", "loss"}
    both = total_terms([clean, Contrastive(clip, (1.0, 1.0))], feats)
    assert torch.allclose(both["loss"], reference["loss"] + both["contrastive"])


def test_configs_name_their_objectives_and_the_anchor_composes():
    assert TrainConfig(data="x").objective_names() == ("clip",)
    assert TrainConfig(data="x", defense="roclip").objective_names() == ("roclip",)
    assert FinetuneConfig(checkpoint="c").objective_names() == ("cleanclip",)
    assert FinetuneConfig(checkpoint="c", objective="clip", anchor_weight=2.0).objective_names() == ("clip", "anchor")
    assert {"clip", "cleanclip", "roclip", "anchor"} <= set(OBJECTIVES)
    model = torch.nn.Linear(2, 2)
    ctx = ObjectiveContext(clip_loss=make_clip_loss(local_loss=True, gather_with_grad=True, rank=0, world_size=1),
                           model=model)
    objectives = build_objectives(FinetuneConfig(checkpoint="c", anchor_weight=3.0), ctx)
    assert [o.weights for o in objectives] == [{"multimodal": 1.0, "inmodal": 1.0}, {"anchor": 3.0}]
    assert objectives[0].views.mode == "cleanclip" and objectives[1].views is None
    # the anchor's copy is frozen and apart from the model that trains
    assert all(not p.requires_grad for p in objectives[1].frozen.parameters())
    assert objectives[1].frozen.weight.data_ptr() != model.weight.data_ptr()


def _drift(start: Path, end: Path, data: Path) -> float:
    """Mean squared distance of the unit image and text embeddings of ``data``'s pairs, end model vs start."""
    from PIL import Image

    with open(data, newline="") as fh:
        rows = list(csv.DictReader(fh))
    a, b = load_checkpoint(start), load_checkpoint(end)
    with torch.no_grad():
        images = torch.stack([a.preprocess_val(Image.open(data.parent / r["image"]).convert("RGB")) for r in rows])
        tokens = a.tokenizer([r["caption"] for r in rows])
        out = 0.0
        for enc, x in (("encode_image", images), ("encode_text", tokens)):
            fa = getattr(a.model, enc)(x, normalize=True)
            fb = getattr(b.model, enc)(x, normalize=True)
            out += float((fa - fb).pow(2).sum(-1).mean()) / 2
    return out


def test_anchor_keeps_clean_embeddings_near_the_start(tmp_path, data, pretrained):
    common = dict(checkpoint=str(pretrained), data=str(data), epochs=2, batch_size=16, lr=5e-3, warmup=1,
                  objective="clip", **FAST)
    finetune(FinetuneConfig(out=str(tmp_path / "free"), **common))
    finetune(FinetuneConfig(out=str(tmp_path / "anchored"), anchor_weight=50.0, **common))
    free = _drift(pretrained, tmp_path / "free" / "final.safetensors", data)
    anchored = _drift(pretrained, tmp_path / "anchored" / "final.safetensors", data)
    assert anchored < 0.5 * free, (anchored, free)
    with open(tmp_path / "anchored" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:  # the anchor is logged and summed with its weight
        assert float(r["loss"]) == pytest.approx(float(r["contrastive"]) + 50.0 * float(r["anchor"]), rel=1e-4)


@pytest.mark.parametrize("lr", [1e20, math.inf])
def test_non_finite_training_stops_naming_step_and_lr(tmp_path, data, lr):
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(data), model=MODEL, epochs=2, batch_size=16, lr=lr, warmup=1, save_every_steps=1,
                      out=str(out), **FAST)
    with pytest.raises(EftclipError, match=r"step \d+.* not finite|step \d+.* is (nan|inf)") as err:
        train(cfg)
    named_lr = float(re.search(r"at lr (\S+);", str(err.value)).group(1))
    assert named_lr > 1e15  # the lr of the failing step (the schedule's, near the peak)
    assert not (out / "final.safetensors").exists()
    # whatever checkpoint is the latest holds finite weights
    latest = out / "checkpoints" / "latest.json"
    if latest.exists():
        weights = read_state_dict(out / "checkpoints" / json.loads(latest.read_text())["weights"])
        assert all(torch.isfinite(t).all() for t in weights.values())


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch):
    """A loss that turns NaN in epoch 2 stops the run; epoch 1's checkpoint stays the latest."""

    class NanAfter(Contrastive):
        def __init__(self, clip_loss, crop_scale):
            super().__init__(clip_loss, crop_scale)
            self.steps = 0

        def forward(self, feats):
            self.steps += 1
            terms = super().forward(feats)
            return {"contrastive": terms["contrastive"] * (math.nan if self.steps > 5 else 1.0)}

    monkeypatch.setitem(OBJECTIVES, "clip", lambda cfg, ctx: NanAfter(ctx.clip_loss, cfg.crop_scale()))
    out = tmp_path / "nan"
    with pytest.raises(EftclipError, match=r"step 6 \(epoch 2\): the loss is nan at lr .*epoch_1"):
        train(TrainConfig(data=str(data), model=MODEL, epochs=3, batch_size=16, lr=1e-3, warmup=1, out=str(out),
                          **FAST))
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["tag"] == "epoch_1"
    weights = read_state_dict(out / "checkpoints" / latest["weights"])
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_cli_finetune_with_infinite_lr_exits_non_zero(tmp_path, data, pretrained, capsys):
    rc = cli_main(["finetune", "--checkpoint", str(pretrained), "--data", str(data), "--epochs", "1",
                   "--batch-size", "16", "--lr", "inf", "--warmup", "1", "--out", str(tmp_path / "inf"),
                   "--no-progress", "--cpu-threads", "1"])
    err = capsys.readouterr().err
    # an infinite lr is refused with the flags, before any step (a finite lr that diverges is stopped at
    # its step: test_non_finite_training_stops_naming_step_and_lr)
    assert rc == 2 and "lr" in err and "inf" in err and "Traceback" not in err


def test_a_torn_or_unrecorded_checkpoint_is_removed_on_resume(tmp_path):
    """Weights written without their state (a kill or a full disk between the two writes), or a pair
    written after latest.json, are not the run's checkpoint: resume removes them and keeps latest."""
    import json
    import os
    import time

    from eftclip.training.run_files import RunFiles

    files = RunFiles(tmp_path, kind="train", keep=2)
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for name in ("epoch_1.safetensors", "epoch_1.json", "epoch_1.state.pt"):
        (ckpt / name).write_bytes(b"x")
    (ckpt / "latest.json").write_text(json.dumps({"tag": "epoch_1"}))
    old = time.time() - 100
    for name in ("epoch_1.safetensors", "epoch_1.json", "epoch_1.state.pt", "latest.json"):
        os.utime(ckpt / name, (old, old))
    (ckpt / "epoch_2.safetensors").write_bytes(b"torn")  # no state: torn
    (ckpt / "epoch_3.safetensors").write_bytes(b"x")  # a pair newer than latest.json: never recorded
    (ckpt / "epoch_3.state.pt").write_bytes(b"x")
    removed = files.drop_torn_checkpoints({"tag": "epoch_1"})
    assert sorted(removed) == ["epoch_2", "epoch_3"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch_1.json", "epoch_1.safetensors", "epoch_1.state.pt",
                                                      "latest.json"]
