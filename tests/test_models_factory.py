"""Tiny project architectures build through open_clip and run forward."""

import open_clip
import pytest
import torch
from PIL import Image

from eftclip.errors import EftclipError
from eftclip.models import ClipBundle, create_model, list_models, model_config

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # two cores shared by many processes: one intra-op thread is several times faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = ["eftclip-tiny-vit", "eftclip-tiny-rn"]


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_forward(name):
    bundle = create_model(name, seed=0)
    assert isinstance(bundle, ClipBundle)
    assert bundle.name == name and bundle.checkpoint is None
    assert not bundle.model.training
    cfg = model_config(name)
    assert bundle.image_size == 32 == cfg["vision_cfg"]["image_size"]
    # tokenizer follows the config's context length, not open_clip's default 77
    assert bundle.context_length == cfg["text_cfg"]["context_length"] == 32
    tokens = bundle.tokenizer(["a photo of an umbrella", "a dog"])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.long

    img = Image.new("RGB", (57, 41), (200, 30, 30))
    x = torch.stack([bundle.preprocess_val(img), bundle.preprocess_train(img)])
    assert x.shape == (2, 3, 32, 32)
    with torch.no_grad():
        img_f, txt_f, scale = bundle.model(x, tokens)
    assert img_f.shape == (2, cfg["embed_dim"]) and txt_f.shape == (2, cfg["embed_dim"])
    # open_clip normalises features in forward
    assert torch.allclose(img_f.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.isfinite(img_f).all() and torch.isfinite(txt_f).all()
    assert scale.item() > 1


def test_tiny_models_registered_with_open_clip():
    for name in TINY:
        assert name in list_models()
        assert name in open_clip.list_models()


def test_tiny_models_can_learn():
    # one optimiser step on a contrastive loss lowers it: the towers are trainable
    gen = torch.Generator().manual_seed(0)
    bundle = create_model("eftclip-tiny-vit", seed=0)
    model = bundle.model.train()
    x = torch.rand(4, 3, 32, 32, generator=gen)
    tokens = bundle.tokenizer(["red", "green", "blue", "yellow"])
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = loss_fn(*model(x, tokens))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(EftclipError, match="unknown model architecture 'no-such-net'"):
        create_model("no-such-net")


def test_uncached_hub_names_are_one_clear_error(tmp_path, monkeypatch):
    # hub names are accepted now (tests/test_models_pretrained.py); offline and uncached, one named error
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EftclipError, match="someone/some-clip.*not in the local cache.*HF_HUB_OFFLINE"):
        create_model("hf-hub:someone/some-clip")


def test_seeded_random_init_is_reproducible_and_leaves_global_rng():
    import torch

    before = torch.random.get_rng_state()
    a = create_model("eftclip-tiny-vit", seed=7).model.state_dict()
    b = create_model("eftclip-tiny-vit", seed=7).model.state_dict()
    c = create_model("eftclip-tiny-vit", seed=8).model.state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)
