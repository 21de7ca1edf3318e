"""OWLv2, Grounding DINO and SAM oracles through their real transformers loading code,
with tiny randomly initialised models built offline and saved to tmp folders."""

import json

import numpy as np
import pytest

from eftclip.errors import EftclipError
from eftclip.oracles import create_oracle

tf = pytest.importorskip("transformers")

WORDS = ["a", "photo", "of", "dog", "cat", "umbrella", "red", "car", "square", "blue", "disc", "the"]


def clip_tokenizer():
    """A tiny CLIP BPE tokenizer over WORDS (whole words as merges), built offline."""
    vocab, merges = {}, []
    for ch in sorted(set("".join(WORDS))):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for w in WORDS:
        cur = list(w[:-1]) + [w[-1] + "</w>"]
        while len(cur) > 1:
            merged = cur[0] + cur[1]
            if (cur[0], cur[1]) not in merges:
                merges.append((cur[0], cur[1]))
            vocab.setdefault(merged, len(vocab))
            cur = [merged] + cur[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = tf.CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 16
    return tok, vocab


def save_sam(folder):
    cfg = tf.SamConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, output_channels=32, num_hidden_layers=2,
                           num_attention_heads=4, image_size=64, patch_size=8, window_size=4,
                           global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                 iou_head_hidden_dim=32),
    )
    tf.SamModel(cfg).save_pretrained(folder)
    ip = tf.SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                              mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
    tf.SamProcessor(image_processor=ip).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    # random weights from a fixed seed, without touching the session's global RNG: drawn from
    # whatever state earlier tests left, one of OWLv2's sigmoid scores once underflowed to 0
    # and fell below post-processing's strict "> threshold", so a patch box went missing
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _build_models(tmp_path_factory)


def _build_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tok, vocab = clip_tokenizer()
    owl = root / "owlv2"
    cfg = tf.Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=64, patch_size=16, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=32,
    )
    tf.Owlv2ForObjectDetection(cfg).save_pretrained(owl)
    tf.Owlv2Processor(image_processor=tf.Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok).save_pretrained(owl)

    gd = root / "gdino"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS
    btok = tf.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    gcfg = tf.GroundingDinoConfig(
        backbone_config=dict(model_type="swin", window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                             image_size=64, out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4]),
        text_config=dict(model_type="bert", vocab_size=len(words), hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=8, max_position_embeddings=32),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=6, num_feature_levels=4,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32, use_timm_backbone=False, use_pretrained_backbone=False,
    )
    tf.GroundingDinoForObjectDetection(gcfg).save_pretrained(gd)
    ip = tf.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    tf.GroundingDinoProcessor(image_processor=ip, tokenizer=btok).save_pretrained(gd)
    return {"owlv2": owl, "grounding-dino": gd, "sam": save_sam(root / "sam")}


def images():
    rng = np.random.default_rng(0)
    a = np.full((48, 80, 3), 235, np.uint8)
    a[5:30, 8:33] = (220, 30, 30)
    b = rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)
    return a, b


def check_well_formed(res, prompts, image, with_masks):
    h, w = image.shape[:2]
    assert res.unknown == []  # open vocabulary: every prompt can be asked
    for f in res.found:
        assert f.label in prompts
        assert 0.0 <= f.score <= 1.0
        x1, y1, x2, y2 = f.box_xyxy
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        if with_masks:
            assert f.mask is not None and f.mask.shape == (h, w) and f.mask.dtype == bool
        else:
            assert f.mask is None


def test_owlv2_loads_and_answers(models):
    o = create_oracle("owlv2", model_path=models["owlv2"], min_score=0.0)
    a, b = images()
    prompts_a, prompts_b = ["red square", "umbrella", "dog"], ["cat"]
    ra, rb = o.find_batch([a, b], [prompts_a, prompts_b])
    check_well_formed(ra, prompts_a, a, False)
    check_well_formed(rb, prompts_b, b, False)
    # every one of OWLv2's (64/16)^2 patch boxes comes back at min_score 0
    assert len(ra.found) == 16 and len(rb.found) == 16
    # the one-prompt image, padded to three queries with its own prompt, only ever answers "cat"
    assert {f.label for f in rb.found} == {"cat"}
    single = o.find(a, prompts_a)
    assert [f.label for f in single.found] == [f.label for f in ra.found]
    assert np.allclose([f.score for f in single.found], [f.score for f in ra.found], atol=1e-4)
    strict = create_oracle("owlv2", model_path=models["owlv2"], min_score=0.99).find(a, prompts_a)
    assert all(f.score > 0.99 for f in strict.found)


def test_owlv2_with_sam_masks(models):
    o = create_oracle("owlv2", model_path=models["owlv2"], sam_path=models["sam"], min_score=0.0)
    a, _ = images()
    res = o.find(a, ["red square"])
    check_well_formed(res, ["red square"], a, True)
    assert len(res.found) == 16


def test_grounding_dino_loads_and_answers(models):
    o = create_oracle("grounding-dino", model_path=models["grounding-dino"], min_score=0.0)
    a, b = images()
    pa, pb = ["red square", "Umbrella", "dog"], ["cat"]
    ra, rb = o.find_batch([a, b], [pa, pb])
    check_well_formed(ra, pa, a, False)
    check_well_formed(rb, pb, b, False)
    assert 0 < len(ra.found) <= 6 and 0 < len(rb.found) <= 6  # at most num_queries boxes
    assert {f.label for f in rb.found} == {"cat"}


def test_grounding_dino_caption_and_token_owners(models):
    o = create_oracle("grounding-dino", model_path=models["grounding-dino"], sam_path=models["sam"])
    text, spans = o.caption(["Dog", "red car"])
    assert text == "dog. red car." and spans == [(0, 3), (5, 12)]
    owner = o._token_owner(text, spans, 10)
    # [CLS] dog . red car . [SEP] then padding
    assert owner.tolist() == [-1, 0, -1, 1, 1, -1, -1, -1, -1, -1]
    a, _ = images()
    res = create_oracle("grounding-dino", model_path=models["grounding-dino"], sam_path=models["sam"], min_score=0.0).find(a, ["dog"])
    check_well_formed(res, ["dog"], a, True)


def test_hf_bad_paths(models, tmp_path):
    with pytest.raises(EftclipError, match="no config.json"):
        create_oracle("owlv2", model_path=tmp_path)
    with pytest.raises(EftclipError, match="nowhere"):
        create_oracle("grounding-dino", model_path=tmp_path / "nowhere")
    with pytest.raises(EftclipError, match="nosam"):
        create_oracle("owlv2", model_path=models["owlv2"], sam_path=tmp_path / "nosam")
    with pytest.raises(EftclipError, match="no prompts"):
        create_oracle("owlv2", model_path=models["owlv2"]).find(images()[0], [])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "owlv2"}))
    with pytest.raises(EftclipError, match="broken"):
        create_oracle("owlv2", model_path=broken)


def test_owlv2_and_sam_load_by_hub_id_from_the_cache_offline(models, tmp_path, monkeypatch):
    # the same tiny weights, as hub repos in a HF_HOME cache: loaded by id with HF_HUB_OFFLINE=1,
    # they answer exactly as the folder-loaded ones do
    from hub_cache import put_in_hub_cache

    home = tmp_path / "hf"
    put_in_hub_cache(models["owlv2"], home, "tiny-org/owlv2-tiny")
    put_in_hub_cache(models["sam"], home, "tiny-org/sam-tiny")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_id = create_oracle("owlv2", model_path="tiny-org/owlv2-tiny", sam_path="tiny-org/sam-tiny", min_score=0.0)
    by_folder = create_oracle("owlv2", model_path=models["owlv2"], sam_path=models["sam"], min_score=0.0)
    a, _ = images()
    got, want = by_id.find(a, ["dog", "umbrella"]), by_folder.find(a, ["dog", "umbrella"])
    assert len(got.found) == len(want.found) > 0
    for g, w in zip(got.found, want.found):
        assert (g.label, g.box_xyxy) == (w.label, w.box_xyxy) and g.score == pytest.approx(w.score)
        assert g.mask is not None and np.array_equal(g.mask, w.mask)


@pytest.mark.parametrize("oracle", ["owlv2", "grounding-dino"])
def test_uncached_hub_id_is_one_clear_error(oracle, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EftclipError, match=r"'google/not-cached'.*not in the local cache.*HF_HUB_OFFLINE.*HF_HOME"):
        create_oracle(oracle, model_path="google/not-cached")
    # a path-like spelling that does not exist is still "folder not found", not a hub lookup
    with pytest.raises(EftclipError, match="model folder not found"):
        create_oracle(oracle, model_path=str(tmp_path / "no" / "such"))
