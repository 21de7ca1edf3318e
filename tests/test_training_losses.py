"""Loss terms against hand computations, the lr schedule, RoCLIP's pool."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss

from eftclip.training.losses import CleanClipLoss, ContrastiveLoss, make_clip_loss
from eftclip.training.roclip import CaptionPool, RoClipLoss, is_matching_epoch
from eftclip.training.schedule import CosineWithWarmup, cosine_lr_at


def _unit(rows: list[list[float]]) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True)


def _ce_rows(logits: np.ndarray) -> float:
    """Mean over rows of -log softmax(row)[diagonal], written out by hand."""
    total = 0.0
    for i, row in enumerate(logits):
        m = row.max()
        total += -(row[i] - m - math.log(sum(math.exp(v - m) for v in row)))
    return total / len(logits)


@pytest.fixture
def feats():
    img = _unit([[1, 0, 0], [0, 1, 0], [0.5, 0.5, 0.1], [0.2, -1, 0.3]])
    txt = _unit([[0.9, 0.1, 0], [0.1, 1, 0.2], [0.4, 0.6, 0], [0, -1, 0.5]])
    aug_img = _unit([[1, 0.2, 0], [0.1, 0.9, 0], [0.3, 0.6, 0.2], [0.1, -1, 0.1]])
    aug_txt = _unit([[0.8, 0.3, 0], [0, 1, 0.1], [0.6, 0.6, 0.1], [0.2, -0.9, 0.4]])
    return img, txt, aug_img, aug_txt


def test_cleanclip_terms_match_hand_computation(feats):
    img, txt, aug_img, aug_txt = feats
    scale = torch.tensor(7.0, dtype=torch.float64)
    loss = CleanClipLoss(make_clip_loss(local_loss=True, gather_with_grad=True, rank=0, world_size=1),
                         clip_weight=0.7, inmodal_weight=2.5)
    out = loss(img, txt, scale, aug_image=aug_img, aug_text=aug_txt)

    I, T, Ia, Ta = (x.numpy() for x in (img, txt, aug_img, aug_txt))
    s = 7.0
    multimodal = (_ce_rows(s * I @ T.T) + _ce_rows(s * T @ I.T)) / 2
    inmodal_image = _ce_rows(s * I @ Ia.T)
    inmodal_text = _ce_rows(s * T @ Ta.T)
    inmodal = (inmodal_image + inmodal_text) / 2
    assert float(out["multimodal"]) == pytest.approx(multimodal, rel=1e-9)
    assert float(out["inmodal_image"]) == pytest.approx(inmodal_image, rel=1e-9)
    assert float(out["inmodal_text"]) == pytest.approx(inmodal_text, rel=1e-9)
    assert float(out["inmodal"]) == pytest.approx(inmodal, rel=1e-9)
    assert float(out["loss"]) == pytest.approx(0.7 * multimodal + 2.5 * inmodal, rel=1e-9)
    # the in-modal terms really depend on the views: swap two views and the term changes
    swapped = loss(img, txt, scale, aug_image=aug_img[[1, 0, 2, 3]], aug_text=aug_txt)
    assert float(swapped["inmodal_image"]) > float(out["inmodal_image"]) + 0.1
    assert float(swapped["multimodal"]) == pytest.approx(multimodal, rel=1e-9)


def test_cleanclip_weights_zero_gives_plain_clip(feats):
    img, txt, aug_img, aug_txt = feats
    scale = torch.tensor(3.0, dtype=torch.float64)
    clip = make_clip_loss(local_loss=False, gather_with_grad=False, rank=0, world_size=1)
    only_clip = CleanClipLoss(clip, clip_weight=1.0, inmodal_weight=0.0)(img, txt, scale, aug_image=aug_img, aug_text=aug_txt)
    plain = ContrastiveLoss(clip)(img, txt, scale)
    assert float(only_clip["loss"]) == pytest.approx(float(plain["loss"]), rel=1e-12)


def test_contrastive_is_open_clip_cliploss(feats):
    img, txt, _, _ = feats
    scale = torch.tensor(10.0, dtype=torch.float64)
    ours = ContrastiveLoss(make_clip_loss(local_loss=True, gather_with_grad=True, rank=0, world_size=1))(img, txt, scale)
    ref = ClipLoss()(img, txt, scale)
    assert isinstance(ours["loss"], torch.Tensor)
    assert float(ours["contrastive"]) == pytest.approx(float(ref), rel=1e-12)


def test_cosine_schedule_semantics():
    base, warm, total = 1e-3, 10, 110
    assert cosine_lr_at(0, base_lr=base, warmup=warm, total_steps=total) == pytest.approx(base / 10)
    assert cosine_lr_at(4, base_lr=base, warmup=warm, total_steps=total) == pytest.approx(base * 5 / 10)
    assert cosine_lr_at(9, base_lr=base, warmup=warm, total_steps=total) == pytest.approx(base)
    assert cosine_lr_at(10, base_lr=base, warmup=warm, total_steps=total) == pytest.approx(base)
    assert cosine_lr_at(60, base_lr=base, warmup=warm, total_steps=total) == pytest.approx(base / 2)
    assert cosine_lr_at(109, base_lr=base, warmup=warm, total_steps=total) < base * 1e-3
    lrs = [cosine_lr_at(s, base_lr=base, warmup=warm, total_steps=total) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [], "weight_decay": 0.0}], lr=123.0)
    sched = CosineWithWarmup(opt, base_lr=base, warmup=warm, total_steps=total)
    assert sched(3) == pytest.approx(base * 4 / 10)
    assert all(g["lr"] == pytest.approx(base * 4 / 10) for g in opt.param_groups)


def test_roclip_pool_is_fifo_and_matches_nearest():
    pool = CaptionPool(3)
    pool.add(_unit([[1, 0, 0], [0, 1, 0]]).float())
    pool.add(_unit([[0, 0, 1], [1, 1, 0]]).float())
    assert len(pool) == 3
    assert torch.allclose(pool.features[0], _unit([[0, 1, 0]]).float()[0])  # the oldest went
    image = _unit([[0.1, 0.1, 1.0], [0.0, 0.9, 0.1]]).float()
    text = _unit([[1, 0, 0], [0.0, 0.9, 0.1]]).float().requires_grad_(True)
    matched, own = pool.match(image, text)
    assert torch.allclose(matched[0], _unit([[0, 0, 1]]).float()[0])  # from the pool
    assert own.tolist() == [False, True]  # image 1's own caption is its nearest
    matched.sum().backward()
    assert text.grad[1].abs().sum() > 0 and text.grad[0].abs().sum() == 0


def test_roclip_loss_switches_with_matching():
    pool = CaptionPool(8)
    pool.add(_unit([[0, 0, 1], [0, 1, 1]]).float())
    loss = RoClipLoss(make_clip_loss(local_loss=True, gather_with_grad=True, rank=0, world_size=1), pool)
    img = _unit([[1, 0, 0.1], [0.1, 0.2, 1]]).float()
    txt = _unit([[1, 0, 0], [0, 1, 0]]).float()
    scale = torch.tensor(5.0)
    plain = loss(img, txt, scale)
    assert float(plain["matched_own"]) == 1.0
    loss.matching = True
    matched = loss(img, txt, scale)
    assert float(matched["matched_own"]) == 0.5
    assert float(matched["loss"]) != pytest.approx(float(plain["loss"]))
    assert [is_matching_epoch(e, 2) for e in range(4)] == [False, True, False, True]


def test_schedule_equals_open_clip_trainers_cosine_lr():
    scheduler = pytest.importorskip("open_clip_train.scheduler", reason="open_clip_train (in the open_clip_torch wheel) not importable")
    p = torch.nn.Parameter(torch.zeros(1))
    theirs_opt = torch.optim.AdamW([p], lr=1.0)
    theirs = scheduler.cosine_lr(theirs_opt, 5e-4, 100, 1000)
    ours_opt = torch.optim.AdamW([p], lr=1.0)
    ours = CosineWithWarmup(ours_opt, base_lr=5e-4, warmup=100, total_steps=1000)
    for step in [0, 1, 50, 99, 100, 101, 400, 777, 999]:
        assert ours(step) == pytest.approx(theirs(step), rel=1e-12, abs=1e-15)
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(theirs_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
