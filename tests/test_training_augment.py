"""AutoAugment and EDA: determinism from passed generators, each EDA operation, which items get what."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import AutoAugment

sys.path.insert(0, str(Path(__file__).parent))
from training_fixtures import make_pairs  # noqa: E402

from eftclip.training import augment as aug  # noqa: E402
from eftclip.training.augment import EDA, SeededAutoAugment, TableSynonyms, simclr_augment  # noqa: E402
from eftclip.training.data import PairDataset, Pairs  # noqa: E402


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)


def test_autoaugment_is_torchvisions_and_follows_the_generator():
    tf = SeededAutoAugment()
    assert isinstance(tf, AutoAugment)
    img = _image()
    global_state = torch.random.get_rng_state()
    a = tf(img, torch.Generator().manual_seed(5))
    b = tf(img, torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), global_state)  # global generator untouched
    assert a.dtype == torch.uint8 and a.shape == img.shape
    assert torch.equal(a, b)
    outs = [tf(img, torch.Generator().manual_seed(s)) for s in range(20)]
    assert sum(not torch.equal(o, img) for o in outs) >= 10  # the policies really change images
    assert len({o.numpy().tobytes() for o in outs}) >= 5


def test_simclr_augment_changes_and_repeats():
    img = _image(1)
    a = simclr_augment(img, torch.Generator().manual_seed(3))
    b = simclr_augment(img, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == img.shape and a.dtype == torch.uint8
    assert not torch.equal(a, img)


@pytest.fixture
def eda():
    return EDA(TableSynonyms(), alpha=0.2)


def test_eda_operations_do_what_they_say(eda):
    words = "a photo of a small red car near a big house".split()
    rng = np.random.default_rng(0)
    swapped = eda.random_swap(words, 2, rng)
    assert sorted(swapped) == sorted(words) and swapped != words
    deleted = eda.random_deletion(words, 2, np.random.default_rng(1))
    assert len(deleted) < len(words) and all(w in words for w in deleted)
    replaced = eda.synonym_replacement(words, 2, np.random.default_rng(2))
    changed = [(a, b) for a, b in zip(words, replaced) if a != b]
    assert changed and all(b in eda.synonyms.synonyms(a) for a, b in changed)
    assert all(a not in aug.STOP_WORDS for a, _ in changed)
    inserted = eda.random_insertion(words, 1, np.random.default_rng(3))
    assert len(inserted) == len(words) + 1
    extra = list(inserted)
    for w in words:
        extra.remove(w)
    assert any(extra[0] in eda.synonyms.synonyms(w) for w in words)


def test_eda_is_deterministic_and_leaves_global_rngs(eda):
    np_state = np.random.get_state()[1].copy()
    py_state = random.getstate()
    cap = "A photo of a red umbrella, on the street!"
    a = [eda.augment(cap, np.random.default_rng(s)) for s in range(10)]
    b = [eda.augment(cap, np.random.default_rng(s)) for s in range(10)]
    assert a == b
    assert len(set(a)) > 3 and all(x != cap for x in a)
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state


@pytest.mark.parametrize("caption", ["123 456", "!!! ???", "", "   ", "42"])
def test_eda_captions_without_letters_do_not_crash(eda, caption):
    for op in EDA.OPERATIONS:
        assert eda.augment(caption, np.random.default_rng(0), operation=op) == caption


def test_eda_single_word(eda):
    for op in EDA.OPERATIONS:
        out = eda.augment("umbrella", np.random.default_rng(0), operation=op)
        assert out and out.split()


def test_fallback_table_warns_when_wordnet_missing(monkeypatch):
    class Missing:
        def __init__(self, *a, **k):
            raise LookupError("Resource wordnet not found")

    monkeypatch.setattr(aug, "WordNetSynonyms", Missing)
    aug._wordnet_or_none.cache_clear()
    with pytest.warns(UserWarning, match="shipped synonym table"):
        source = aug.default_synonyms()
    assert isinstance(source, TableSynonyms)
    assert "parasol" in source.synonyms("umbrella")
    aug._wordnet_or_none.cache_clear()


def test_wordnet_source_when_installed():
    try:
        source = aug.WordNetSynonyms()
    except (ImportError, LookupError) as exc:
        pytest.skip(f"NLTK WordNet corpus not installed here ({type(exc).__name__})")
    syns = source.synonyms("car")
    assert "automobile" in syns and "car" not in syns


def test_dataset_applies_augmentations_to_the_right_items(tmp_path):
    csv_path = make_pairs(tmp_path, 12)
    from eftclip.data.captions import read_captions

    records = read_captions(csv_path).records
    pairs = Pairs(images=records, captions=[r.caption for r in records])
    eda = EDA(TableSynonyms(), alpha=0.2)
    clean = PairDataset(pairs, image_size=32, mode="cleanclip", seed=0, cache=True, eda=eda, progress=False)
    plain = PairDataset(pairs, image_size=32, mode="finetune-clip", seed=0, cache=True, progress=False)
    changed_images = changed_texts = 0
    for i in range(len(pairs)):
        item = clean[(0, i)]
        # the original image and caption are passed through untouched
        assert torch.equal(item["image"], clean.cache[i])
        assert item["text"] == pairs.captions[i]
        # the views are AutoAugment of that image and EDA of that caption, replayable
        assert torch.equal(item["aug_image"], clean[(0, i)]["aug_image"])
        changed_images += not torch.equal(item["aug_image"], item["image"])
        changed_texts += item["aug_text"] != pairs.captions[i].lower()
        assert set(plain[(0, i)]) == {"image", "text"}
        assert torch.equal(plain[(0, i)]["image"], clean.cache[i])
    assert changed_images >= len(pairs) // 2
    assert changed_texts >= len(pairs) // 2
    # another epoch draws other views
    assert any(not torch.equal(clean[(0, i)]["aug_image"], clean[(1, i)]["aug_image"]) for i in range(len(pairs)))

    roclip = PairDataset(pairs, image_size=32, mode="roclip", seed=0, cache=False, eda=eda, progress=False)
    item = roclip[(0, 0)]
    assert set(item) == {"image", "text"} and not torch.equal(item["image"], clean.cache[0])


def test_synonym_source_by_name():
    import eftclip.training.augment as augment
    from eftclip.errors import EftclipError
    from eftclip.training import FinetuneConfig

    assert isinstance(augment.synonym_source("table"), augment.TableSynonyms)
    with pytest.raises(EftclipError, match="--eda-synonyms must be one of auto, wordnet, table"):
        FinetuneConfig(checkpoint="x.safetensors", data="d.csv", eda_synonyms="thesaurus").validate()


def test_wordnet_synonyms_when_missing_name_the_extra(monkeypatch):
    import eftclip.training.augment as augment
    from eftclip.errors import EftclipError

    monkeypatch.setattr(augment, "_wordnet_or_none", lambda: None)
    with pytest.raises(EftclipError, match="'wordnet' extra"):
        augment.synonym_source("wordnet")
    with pytest.warns(UserWarning, match="shipped synonym table"):
        assert isinstance(augment.synonym_source("auto"), augment.TableSynonyms)


def test_sample_random_draws_what_fresh_generators_seeded_by_the_sample_draw():
    import numpy as np
    import torch

    from eftclip.training.data import SampleRandom, sample_seed

    rand = SampleRandom(7, 3, 41)
    assert torch.equal(torch.rand(5, generator=rand.gen),
                       torch.rand(5, generator=torch.Generator().manual_seed(sample_seed(7, 3, 41))))
    assert np.array_equal(rand.rng.random(5), np.random.default_rng([7, 3, 41, 11]).random(5))
    assert rand.gen is rand.gen  # made once: later draws continue the same stream
