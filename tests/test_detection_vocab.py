"""Vocabulary: files, mining nouns from captions, plural-aware matching."""

from __future__ import annotations

import json

import pytest

from eftclip.detection.vocab import LabelMatcher, load_vocab, mine_vocab, singular
from eftclip.errors import EftclipError


@pytest.mark.parametrize(
    "plural,single",
    [("umbrellas", "umbrella"), ("men", "man"), ("women", "woman"), ("buses", "bus"), ("boxes", "box"),
     ("benches", "bench"), ("puppies", "puppy"), ("shoes", "shoe"), ("glass", "glass"), ("bus", "bus"),
     ("traffic lights", "traffic light"), ("people", "person"), ("knives", "knife"), ("cat", "cat")],
)
def test_singular(plural, single):
    assert singular(plural) == single


def test_load_vocab_txt_and_json(tmp_path):
    txt = tmp_path / "v.txt"
    txt.write_text("umbrella\n# a comment\nDogs\n\ntraffic lights  # trailing comment\ndog\n")
    assert load_vocab(txt) == ["umbrella", "dog", "traffic light"]
    assert load_vocab(txt, extra=["cat", "umbrella"]) == ["umbrella", "dog", "traffic light", "cat"]
    js = tmp_path / "v.json"
    js.write_text(json.dumps(["boat", "sky"]))
    assert load_vocab(js) == ["boat", "sky"]


def test_load_vocab_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(EftclipError, match="empty.txt.*empty"):
        load_vocab(empty)
    with pytest.raises(EftclipError, match="not found"):
        load_vocab(tmp_path / "missing.txt")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": 1}))
    with pytest.raises(EftclipError, match="list of strings"):
        load_vocab(bad)


def test_mine_vocab_keeps_frequent_nouns_and_user_labels():
    caps = [
        "a dog sitting on the grass next to two red umbrellas",
        "the dogs are running on the beach",
        "a small dog with a ball on the grass",
        "people walking on the beach under a blue sky",
        "a cat sleeping on a sofa",
    ]
    vocab = mine_vocab(caps, min_count=2, wordnet=False, extra=["umbrella", "horse"])
    assert vocab[0] == "dog"  # most frequent first
    assert {"dog", "grass", "beach"} <= set(vocab)
    assert "umbrella" in vocab and "horse" in vocab  # user labels always present
    for word in ("sitting", "running", "red", "the", "two", "small", "walking"):
        assert word not in vocab
    assert "cat" not in vocab[:-2]  # seen once, below min count (only via extra it could appear)


def test_mine_vocab_size_and_empty():
    names = ["cat", "dog", "boat", "tree", "car", "bird", "horse"]
    caps = [f"a photo of a {names[i % 7]} here" for i in range(50)]
    assert len(mine_vocab(caps, min_count=1, max_size=3, wordnet=False)) == 3
    with pytest.raises(EftclipError, match="empty vocabulary"):
        mine_vocab(["the a of", "is are"], min_count=1, wordnet=False)


def test_label_matcher_plural_and_phrases():
    m = LabelMatcher(["man", "umbrella", "traffic light", "light", "dog"])
    assert m.labels_in("Two men hold red umbrellas near traffic lights.") == {
        "man", "umbrella", "traffic light", "light"}
    assert m.labels_in("A cat on a sofa") == set()
    assert m.labels_in("a DOG") == {"dog"}
