"""The label vocabulary that CLIP ranks and the oracle is prompted with.

A vocabulary is an ordered list of distinct labels (``str``, lower case,
single words or short phrases such as ``"traffic light"``).  It comes from

- a file: ``.txt`` (one label per line, ``#`` starts a comment) or ``.json``
  (a list of strings), via :func:`load_vocab`; or
- the captions of the data (``"mined"``), via :func:`mine_vocab`: words are
  lower-cased, singularised (:func:`singular`), function words and common
  caption adjectives/verbs are dropped with a built-in stop list, and the most
  frequent remaining words (``min_count`` or more) are kept.  No POS tagger is
  downloaded: when NLTK's WordNet corpus is installed, a word is kept only if
  its most common WordNet sense is a noun.

Whatever the source, the labels a user names (``extra``) are always added,
so the labels one cares about (the suspected target, the classes of a
zero-shot set) are never missing.

:class:`LabelMatcher` finds vocabulary labels in free text, plural-aware and
phrase-aware (``"two umbrellas"`` holds ``umbrella``; ``"traffic lights"``
holds ``traffic light``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from eftclip.errors import EftclipError, MissingExtraError

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

# plural -> singular for the irregular nouns common in captions
_IRREGULAR = {
    "men": "man",
    "women": "woman",
    "people": "person",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
    "oxen": "ox",
    "knives": "knife",
    "leaves": "leaf",
    "wolves": "wolf",
    "shelves": "shelf",
    "loaves": "loaf",
    "halves": "half",
    "calves": "calf",
    "scarves": "scarf",
    "wives": "wife",
    "lives": "life",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
    "series": "series",
    "species": "species",
    "glasses": "glasses",
    "pants": "pants",
    "jeans": "jeans",
    "scissors": "scissors",
    "shorts": "shorts",
    "clothes": "clothes",
    "buses": "bus",
    "tomatoes": "tomato",
    "potatoes": "potato",
    "heroes": "hero",
}
# words ending in -s that are already singular
_S_SINGULAR = {"bus", "gas", "lens", "glass", "grass", "dress", "cross", "boss", "class", "chess", "bass", "canvas",
               "cactus", "octopus", "virus", "walrus", "hippopotamus", "bonus", "circus", "iris", "tennis", "news",
               "physics", "mathematics", "this", "is", "was", "has", "his", "its", "us", "yes", "plus", "atlas"}

# function words, numbers, colours, sizes and verbs that captions are full of
STOPWORDS = frozenset(
    """
    a an the and or but nor of in on at by for with without from to into onto over under above below near
    beside besides between behind before after during through across along around against among up down
    out off about there here this that these those it its it's he she they them their his her him we us our
    you your i me my is are was were be been being am has have had having do does did doing will would can
    could should may might must shall not no yes very some any each every all both few many more most much
    other another such own same so than too only just also as if then while who whom whose which what when
    where why how one two three four five six seven eight nine ten several lot lots couple group pair bunch
    top bottom side front back middle left right next far close inside outside together away
    red green blue yellow white black brown gray grey orange pink purple golden silver dark light bright
    colorful colourful big small large little tall short long wide old young new huge tiny open empty full
    various different other single double many few
    sit sits sitting sat stand stands standing stood walk walks walking ride rides riding run runs running
    hold holds holding held look looks looking play plays playing wear wears wearing lay lays laying lie
    lies lying fly flies flying eat eats eating go goes going get gets getting make makes making take takes
    taking show shows showing use uses using watch watches watching wait waits waiting pose poses posing
    park parked cover covered fill filled view photo picture image close-up closeup shot
    """.split()
)

# -ing/-ed words that are nouns, kept by the no-WordNet fallback
_ING_NOUNS = {"building", "ceiling", "clothing", "painting", "ring", "king", "wing", "string", "spring", "swing",
              "thing", "bedding", "stuffing", "pudding", "sling", "icing", "railing", "sled", "bed", "shed"}


def singular(word: str) -> str:
    """The singular of an English noun, by rule (``"umbrellas"`` -> ``"umbrella"``).

    Handles the irregular plurals captions use (men, women, people, ...) and
    the -ies/-ves/-es/-s endings; a phrase is singularised on its last word.
    """
    word = word.strip().lower()
    if " " in word:
        head, _, last = word.rpartition(" ")
        return f"{head} {singular(last)}"
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word in _S_SINGULAR or not word.endswith("s"):
        return word
    if word.endswith("ss") or word.endswith("us") or word.endswith("is"):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    return word[:-1]


def normalise_label(label: str) -> str:
    """Lower case, single spaces, singular: the form labels are compared in."""
    return singular(" ".join(label.lower().replace("_", " ").split()))


def tokens(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` (letters and inner apostrophes)."""
    return _WORD.findall(text.lower())


def load_vocab(path: str | os.PathLike, *, extra: Iterable[str] = ()) -> list[str]:
    """Read a vocabulary file (``.txt`` one label a line, or ``.json`` list) and add ``extra``.

    Labels are normalised (:func:`normalise_label`) and de-duplicated in order.
    An empty result is an error naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise EftclipError(f"{path}: vocabulary file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise EftclipError(f"{path}: cannot read vocabulary ({exc})") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EftclipError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise EftclipError(f"{path}: a JSON vocabulary must be a list of strings")
        labels = data
    else:
        labels = [line.split("#", 1)[0] for line in text.splitlines()]
    vocab = _dedupe(list(labels) + list(extra))
    if not vocab:
        raise EftclipError(f"{path}: the vocabulary is empty")
    return vocab


def wordnet_noun_check(mode: str | bool = "auto"):
    """A predicate ``word -> bool`` (most common WordNet sense is a noun), or ``None``.

    ``mode="auto"`` returns ``None`` when NLTK or its WordNet corpus is not
    installed; ``True`` makes that an error.
    """
    if mode is False or mode == "off":
        return None
    try:
        from nltk.corpus import wordnet as wn
    except ImportError as exc:
        if mode == "auto":
            return None
        raise MissingExtraError("the WordNet noun check", "wordnet", "nltk") from exc
    try:
        wn.synsets("dog")
    except LookupError as exc:
        if mode == "auto":
            return None
        raise EftclipError(
            "the WordNet noun check needs NLTK's 'wordnet' corpus, which is not installed "
            "(place it under an NLTK data path, e.g. ~/nltk_data/corpora/wordnet)"
        ) from exc

    def is_noun(word: str) -> bool:
        syns = wn.synsets(word)
        return bool(syns) and syns[0].pos() == "n"

    return is_noun


def mine_vocab(
    captions: Iterable[str],
    *,
    min_count: int = 3,
    max_size: int = 200,
    extra: Iterable[str] = (),
    wordnet: str | bool = "auto",
) -> list[str]:
    """Mine a noun vocabulary from captions; most frequent first, then ``extra``.

    Words are singularised and counted once per caption; stop words and short
    words are dropped; without WordNet, ``-ing``/``-ed``/``-ly`` words (mostly
    verbs and adverbs in captions) are dropped unless known nouns.  Labels in
    ``extra`` are always included (appended when mining did not find them).
    """
    if max_size < 1:
        raise EftclipError(f"--vocab-size must be at least 1, got {max_size}")
    counts: Counter[str] = Counter()
    for cap in captions:
        counts.update({singular(w) for w in tokens(cap) if w not in STOPWORDS and len(w) > 2})
    is_noun = wordnet_noun_check(wordnet)
    mined = []
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n < min_count or word in STOPWORDS:
            continue
        if is_noun is not None:
            if not is_noun(word):
                continue
        elif word.endswith(("ing", "ed", "ly")) and word not in _ING_NOUNS:
            continue
        mined.append(word)
        if len(mined) >= max_size:
            break
    vocab = _dedupe(mined + list(extra))
    if not vocab:
        raise EftclipError(
            f"mining the captions gave an empty vocabulary (min count {min_count}); "
            "pass --vocab FILE or --labels"
        )
    return vocab


class LabelMatcher:
    """Finds vocabulary labels in text, plural- and phrase-aware.

    ``labels_in("Two men hold red umbrellas")`` with vocabulary
    ``["man", "umbrella", "dog"]`` gives ``{"man", "umbrella"}``.
    """

    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        # normalised token tuple -> vocabulary label, longest phrases tried first
        self._phrases: dict[tuple[str, ...], str] = {}
        for label in self.vocab:
            key = tuple(singular(t) for t in tokens(label))
            if key:
                self._phrases.setdefault(key, label)
        self._max_len = max((len(k) for k in self._phrases), default=1)

    def labels_in(self, text: str) -> set[str]:
        words = [singular(t) for t in tokens(text)]
        found = set()
        for i in range(len(words)):
            for n in range(min(self._max_len, len(words) - i), 0, -1):
                label = self._phrases.get(tuple(words[i : i + n]))
                if label is not None:
                    found.add(label)
        return found


def _dedupe(labels: Iterable[str]) -> list[str]:
    out: dict[str, None] = {}
    for lab in labels:
        norm = normalise_label(lab)
        if norm:
            out.setdefault(norm, None)
    return list(out)
