"""CLIPs by open_clip name: hf-hub repos and tags from the hub cache, offline; the one error otherwise."""

import pytest
import torch

from eftclip.errors import EftclipError
from eftclip.models import create_model, load_clip, resolve_clip_weights, save_checkpoint
from eftclip.models.hub import resolve_pretrained
from hub_cache import REPO, put_in_hub_cache, tiny_hub_repo


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """An empty HF_HOME in tmp_path with HF_HUB_OFFLINE=1; returns the HF_HOME path."""
    home = tmp_path / "hf"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def assert_same_weights(model, state):
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_hf_hub_model_loads_offline_from_the_cache(tmp_path, offline):
    state = tiny_hub_repo(tmp_path, offline)
    bundle = load_clip(model=f"hf-hub:{REPO}")
    assert bundle.name == f"hf-hub:{REPO}" and bundle.pretrained == f"hf-hub:{REPO}"
    assert str(offline) in bundle.checkpoint and bundle.checkpoint.endswith("open_clip_model.safetensors")
    assert_same_weights(bundle.model, state)
    assert not bundle.model.training and bundle.image_size == 32 and bundle.context_length == 32
    # the repo's preprocess_cfg is used, as open_clip does
    norm = [t for t in bundle.preprocess_val.transforms if type(t).__name__ == "Normalize"][0]
    assert list(norm.mean) == [0.5, 0.5, 0.5] and list(norm.std) == [0.25, 0.25, 0.25]
    with torch.no_grad():
        feats = bundle.model.encode_text(bundle.tokenizer(["a red disc"]))
    assert feats.shape == (1, 64) and torch.isfinite(feats).all()


def test_hf_hub_as_pretrained_of_a_named_architecture(tmp_path, offline):
    # open_clip's other spelling: the architecture by name, the weights from a repo (a .bin this time)
    state = tiny_hub_repo(tmp_path, offline, weights="open_clip_pytorch_model.bin")
    bundle = load_clip(model="eftclip-tiny-vit", pretrained=f"hf-hub:{REPO}")
    assert bundle.name == "eftclip-tiny-vit"
    assert_same_weights(bundle.model, state)


def test_hub_weights_feed_finetuning_and_save_under_the_hub_name(tmp_path, offline):
    # fine-tuning takes a file: the cached weights and the architecture to build them with
    state = tiny_hub_repo(tmp_path, offline)
    path, arch = resolve_clip_weights(model=f"hf-hub:{REPO}")
    assert arch == f"hf-hub:{REPO}" and path.startswith(str(offline))
    bundle = load_clip(checkpoint=path, model=arch)
    out = save_checkpoint(bundle.model, tmp_path / "ft.safetensors", model_name=arch)
    again = load_clip(checkpoint=out)  # the side file names the hub architecture
    assert again.name == arch
    assert_same_weights(again.model, state)


def test_uncached_tag_is_one_clear_error(offline):
    with pytest.raises(EftclipError) as err:
        load_clip(model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    msg = str(err.value)
    assert "laion2b_s34b_b79k" in msg and "ViT-B-32" in msg
    assert "not in the local cache" in msg and "HF_HUB_OFFLINE" in msg
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg and "HF_HOME" in msg and "--pretrained FILE" in msg
    # nothing was written to the cache either
    assert list(offline.rglob("*")) == []


def test_a_cached_tag_just_works(tmp_path, offline):
    # an open_clip tag whose hub repo sits in the cache: its file is found, no network
    cfg = __import__("open_clip").get_pretrained_cfg("RN50", "openai")
    repo = cfg["hf_hub"].rstrip("/")
    src = tmp_path / "tag"
    src.mkdir()
    (src / "open_clip_model.safetensors").write_bytes(b"placeholder")  # only its path is resolved here
    put_in_hub_cache(src, offline, repo)
    found = resolve_pretrained("RN50", "openai")
    # trained with QuickGELU: the -quickgelu architecture is built, with the tag's preprocessing
    assert found.arch == "RN50-quickgelu" and found.weights.name == "open_clip_model.safetensors"
    assert found.preprocess["image_interpolation"] == "bicubic"
    assert str(offline) in str(found.weights)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model="ViT-B-32", pretrained="no-such-tag"), "not an open_clip tag of 'ViT-B-32'.*laion2b_s34b_b79k"),
        (dict(pretrained="openai"), "needs the architecture too"),
        (dict(model="eftclip-tiny-vit"), "no CLIP to load"),
        (dict(checkpoint="a.safetensors", pretrained="openai", model="RN50"), "both given"),
        (dict(model="RN50", pretrained="weights/missing.pt"), "weights/missing.pt: weights file not found"),
    ],
)
def test_bad_combinations_name_the_flag(offline, kwargs, match):
    with pytest.raises(EftclipError, match=match):
        load_clip(**kwargs)


def test_pretrained_file_goes_through_the_safe_loader(tmp_path):
    bundle = create_model("eftclip-tiny-rn", seed=0)
    path = save_checkpoint(bundle.model, tmp_path / "w.safetensors", model_name="eftclip-tiny-rn")
    again = load_clip(model="eftclip-tiny-rn", pretrained=str(path))
    assert again.checkpoint == str(path) and again.pretrained is None
    assert_same_weights(again.model, bundle.model.state_dict())


def test_a_cached_tag_loads_end_to_end(tmp_path, offline, monkeypatch):
    # open_clip has no tag for a tiny model; add one to its registry the way its own entries read
    # (hub repo with a trailing slash = the default weights file), then load by tag, offline
    import open_clip

    state = tiny_hub_repo(tmp_path, offline)
    real = open_clip.get_pretrained_cfg
    tag_cfg = {"hf_hub": f"{REPO}/", "mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2), "quick_gelu": False}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda model, tag: tag_cfg if (model, tag) == ("eftclip-tiny-vit", "tiny") else real(model, tag))
    bundle = load_clip(model="eftclip-tiny-vit", pretrained="tiny")
    assert bundle.name == "eftclip-tiny-vit" and bundle.pretrained == "tiny"
    assert_same_weights(bundle.model, state)
    norm = [t for t in bundle.preprocess_val.transforms if type(t).__name__ == "Normalize"][0]
    assert list(norm.std) == [0.2, 0.2, 0.2]  # the tag's preprocessing, as open_clip applies it
    assert resolve_clip_weights(model="eftclip-tiny-vit", pretrained="tiny") == (bundle.checkpoint, "eftclip-tiny-vit")
