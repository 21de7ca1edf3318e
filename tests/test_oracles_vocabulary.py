"""Prompt -> oracle-class mapping: names, plurals, the synonym table, WordNet."""

import sys
import warnings
from pathlib import Path

import pytest

from eftclip.errors import EftclipError, MissingExtraError
from eftclip.oracles import vocabulary as voc
from eftclip.oracles.vocabulary import VocabularyMapper, load_wordnet, normalize, read_synonyms

COCO_DARKNET = Path(__file__).parents[1] / ".." / "shared" / "models" / "fastestdet" / "coco.names"


@pytest.fixture(scope="module")
def coco_names():
    if not COCO_DARKNET.is_file():
        pytest.skip(f"real COCO class names absent ({COCO_DARKNET})")
    return [n for n in COCO_DARKNET.read_text().splitlines() if n.strip()]


def test_normalize():
    assert normalize("  Traffic_Light ") == "traffic light"
    assert normalize("hair-drier") == "hair drier"


def test_table_only_mapping(coco_names):
    m = VocabularyMapper(coco_names, wordnet=False)
    assert not m.uses_wordnet
    assert m("umbrella") == "umbrella"  # COCO has it
    assert m("Umbrellas") == "umbrella"
    assert m("potted plant") == "pottedplant"  # darknet glues words
    assert m("couch") == "sofa"
    assert m("automobile") == "car"
    assert m("puppy") == "dog"
    assert m("motorcycle") == "motorbike"
    assert m("banana split") is None
    mapped, unknown = m.map_all(["dog", "banana split", "tv"])
    assert mapped == {"dog": "dog", "tv": "tvmonitor"} and unknown == ["banana split"]


def test_user_synonyms_replace_the_table(tmp_path):
    f = tmp_path / "syn.txt"
    f.write_text("# groups\nwidget, gadget, doohickey\n\n")
    groups = read_synonyms(f)
    assert groups == [("widget", "gadget", "doohickey")]
    m = VocabularyMapper(["gadget", "dog"], wordnet=False, synonyms=groups)
    assert m("doohickey") == "gadget" and m("puppy") is None
    with pytest.raises(EftclipError, match="not found"):
        read_synonyms(tmp_path / "nope.txt")
    with pytest.raises(EftclipError, match="at least one class"):
        VocabularyMapper([], wordnet=False)


@pytest.fixture(scope="module")
def wordnet():
    pytest.importorskip("nltk")
    wn = load_wordnet()
    if wn is None:
        pytest.skip("WordNet data absent (apt-get install wordnet-base wordnet-sense-index)")
    return wn


def test_wordnet_hypernyms_without_the_table(coco_names, wordnet):
    # an empty synonym table, so every answer here comes from WordNet
    m = VocabularyMapper(coco_names, wordnet=wordnet, synonyms=[])
    assert m.uses_wordnet
    assert m("puppy") == "dog"  # puppy -> dog (hypernym)
    assert m("automobile") == "car"  # a lemma of car.n.01
    assert m("poodle") == "dog"
    assert m("eagle") == "bird"
    assert m("umbrella") == "umbrella"
    assert m("banana split") is None  # a dessert, not a banana
    assert m("tree") is None  # not Sir Herbert Tree the actor (a person)
    assert m("ostrich") == "bird"  # not "a person who refuses to face reality"
    assert m("dalmatian") == "dog"  # not "a native of Dalmatia"
    assert m("couch") == "sofa"  # a lemma of the same synset


def test_nltk_wordnet_from_debian(tmp_path):
    pytest.importorskip("nltk")
    if not (voc.DEBIAN_WORDNET_DIR / "data.noun").is_file():
        pytest.skip("Debian WordNet absent (apt-get install wordnet-base wordnet-sense-index)")
    corpus = voc.nltk_wordnet_from_debian(tmp_path / "nltk_data")
    assert corpus == tmp_path / "nltk_data" / "corpora" / "wordnet"
    lex = (corpus / "lexnames").read_text().splitlines()
    assert len(lex) == 45 and lex[5].split("\t") == ["05", "noun.animal", "1"]
    assert not any(p.is_symlink() for p in corpus.iterdir())
    wn = load_wordnet(str(corpus))
    assert "dog.n.01" in {h.name() for h in wn.synset("puppy.n.01").hypernyms()}
    with pytest.raises(EftclipError, match="not a WordNet"):
        voc.nltk_wordnet_from_debian(tmp_path / "x", source=tmp_path)


def test_missing_nltk(monkeypatch, coco_names):
    for mod in ("nltk", "nltk.corpus", "nltk.corpus.reader", "nltk.corpus.reader.wordnet", "nltk.data"):
        monkeypatch.setitem(sys.modules, mod, None)
    load_wordnet.cache_clear()
    monkeypatch.setattr(voc, "_warned_no_wordnet", False)
    try:
        with pytest.raises(MissingExtraError) as err:
            VocabularyMapper(coco_names, wordnet=True)
        assert err.value.extra == "wordnet"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = VocabularyMapper(coco_names, wordnet="auto")
        assert any("synonym table" in str(w.message) for w in caught)
        assert m("couch") == "sofa" and not m.uses_wordnet
    finally:
        load_wordnet.cache_clear()
