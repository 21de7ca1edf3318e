"""Augmentations for CleanCLIP and RoCLIP, driven by explicit random generators.

Images
    :class:`SeededAutoAugment` is torchvision's :class:`~torchvision.transforms.AutoAugment`
    (same policies, same operations) whose random choices come from a
    ``torch.Generator`` that the caller passes, so a sample's view depends only on
    ``(seed, epoch, index)`` and a resumed run replays it exactly.
    :func:`simclr_augment` is RoCLIP's image augmentation (random resized crop,
    flip, colour jitter, grayscale), also generator-driven.
    Both take and return ``CHW uint8`` tensors.

Captions
    :class:`EDA` implements Easy Data Augmentation (Wei & Zou, 2019): synonym
    replacement, random insertion, random swap, random deletion.  Synonyms come
    from WordNet through NLTK when its corpus is installed (offline), otherwise
    from ``eda_synonyms.tsv`` shipped with the project, with a warning saying so.
    Randomness comes from a ``numpy.random.Generator`` the caller passes.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from importlib import resources
from typing import Protocol

import numpy as np
import torch
import torchvision.transforms.functional as TF

from eftclip.errors import EftclipError
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

# --------------------------------------------------------------------------- images


class SeededAutoAugment(AutoAugment):
    """torchvision AutoAugment whose sampling uses a caller-supplied ``torch.Generator``.

    ``forward(img CHW uint8 tensor or PIL, generator) -> same type``.
    """

    def __init__(self, policy: AutoAugmentPolicy = AutoAugmentPolicy.IMAGENET):
        super().__init__(policy=policy, interpolation=InterpolationMode.NEAREST)

    def forward(self, img, generator: torch.Generator | None = None):  # type: ignore[override]
        if generator is None:
            return super().forward(img)
        channels, height, width = TF.get_dimensions(img)
        fill = self.fill
        if isinstance(img, torch.Tensor):
            if isinstance(fill, (int, float)):
                fill = [float(fill)] * channels
            elif fill is not None:
                fill = [float(f) for f in fill]
        transform_id = int(torch.randint(len(self.policies), (1,), generator=generator).item())
        probs = torch.rand((2,), generator=generator)
        signs = torch.randint(2, (2,), generator=generator)
        op_meta = self._augmentation_space(10, (height, width))
        for i, (op_name, p, magnitude_id) in enumerate(self.policies[transform_id]):
            if probs[i] <= p:
                magnitudes, signed = op_meta[op_name]
                magnitude = float(magnitudes[magnitude_id].item()) if magnitude_id is not None else 0.0
                if signed and signs[i] == 0:
                    magnitude *= -1.0
                img = _apply_op(img, op_name, magnitude, interpolation=self.interpolation, fill=fill)
        return img


def simclr_augment(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RoCLIP's image augmentation on a ``CHW uint8`` tensor: resized crop (scale 0.5-1),
    horizontal flip (p=0.5), colour jitter (0.4, 0.4, 0.4, 0.1; p=0.8), grayscale (p=0.2)."""
    _, h, w = img.shape

    def u(lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    area = h * w
    top, left, ch, cw = 0, 0, h, w
    for _ in range(10):
        target = area * u(0.5, 1.0)
        ratio = math.exp(u(math.log(3 / 4), math.log(4 / 3)))
        cw_try = int(round(math.sqrt(target * ratio)))
        ch_try = int(round(math.sqrt(target / ratio)))
        if 0 < cw_try <= w and 0 < ch_try <= h:
            top = int(u() * (h - ch_try + 1))
            left = int(u() * (w - cw_try + 1))
            ch, cw = ch_try, cw_try
            break
    img = TF.resized_crop(img, top, left, ch, cw, [h, w], antialias=True)
    if u() < 0.5:
        img = TF.hflip(img)
    if u() < 0.8:
        ops = [
            lambda x: TF.adjust_brightness(x, u(0.6, 1.4)),
            lambda x: TF.adjust_contrast(x, u(0.6, 1.4)),
            lambda x: TF.adjust_saturation(x, u(0.6, 1.4)),
            lambda x: TF.adjust_hue(x, u(-0.1, 0.1)),
        ]
        for k in torch.randperm(4, generator=generator).tolist():
            img = ops[k](img)
    if u() < 0.2:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    return img


# --------------------------------------------------------------------------- captions

# EDA leaves these alone in synonym replacement (the list of the EDA paper, shortened)
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
    her hers herself it its itself they them their theirs themselves what which who whom this that these
    those am is are was were be been being have has had having do does did doing a an the and but if or
    because as until while of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there when where
    why how all any both each few more most other some such no nor not only own same so than too very s
    t can will just don should now""".split()
)


class SynonymSource(Protocol):
    """Where EDA finds synonyms: ``synonyms(word) -> list[str]`` (lower case, without ``word``)."""

    name: str

    def synonyms(self, word: str) -> list[str]: ...


class TableSynonyms:
    """Synonyms from a TSV (``word<TAB>syn1,syn2``; ``#`` comments); default: the shipped table."""

    name = "table"

    def __init__(self, path: str | None = None):
        if path is None:
            text = resources.files("eftclip.training").joinpath("eda_synonyms.tsv").read_text(encoding="utf-8")
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        self.table: dict[str, list[str]] = {}
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            word, _, syns = line.partition("\t")
            word = word.strip().lower()
            options = [s.strip().lower() for s in syns.split(",") if s.strip() and s.strip().lower() != word]
            self.table.setdefault(word, []).extend(o for o in options if o not in self.table.get(word, []))

    def synonyms(self, word: str) -> list[str]:
        return list(self.table.get(word, []))


class WordNetSynonyms:
    """Synonyms from WordNet's lemmas, read offline through NLTK.

    ``reader`` is an NLTK WordNet reader; by default the project's finder
    (:func:`eftclip.oracles.vocabulary.load_wordnet`: ``$EFTCLIP_WORDNET_DIR``,
    NLTK's data path, or Debian's ``wordnet-base`` files) supplies it.  Raises
    LookupError when no WordNet data can be found, ImportError without NLTK.
    """

    name = "wordnet"

    def __init__(self, reader=None):
        if reader is None:
            import nltk  # noqa: F401  (optional extra 'wordnet'; ImportError when absent)

            from eftclip.oracles.vocabulary import load_wordnet

            reader = load_wordnet()
            if reader is None:
                raise LookupError("no WordNet data found (nltk data path, $EFTCLIP_WORDNET_DIR, /usr/share/wordnet)")
        self.wn = reader

    @functools.lru_cache(maxsize=65536)
    def synonyms(self, word: str) -> list[str]:
        out: list[str] = []
        for synset in self.wn.synsets(word):
            for lemma in synset.lemmas():
                name = lemma.name().replace("_", " ").replace("-", " ").lower()
                name = "".join(c for c in name if c == " " or c.isalpha())
                if name and name != word and name not in out:
                    out.append(name)
        return out


@functools.lru_cache(maxsize=1)
def _wordnet_or_none() -> WordNetSynonyms | None:
    try:
        return WordNetSynonyms()
    except (ImportError, LookupError, OSError):
        return None


#: the names ``synonym_source`` takes
SYNONYM_SOURCES = ("auto", "wordnet", "table")


def synonym_source(name: str = "auto") -> SynonymSource:
    """EDA's synonyms by name: ``auto`` (:func:`default_synonyms`), ``wordnet`` or ``table`` (the shipped one).

    Raises:
        EftclipError: ``wordnet`` where NLTK or the WordNet data are missing (the message names the extra).
    """
    if name == "table":
        return TableSynonyms()
    if name == "wordnet":
        source = _wordnet_or_none()
        if source is None:
            raise EftclipError("eda_synonyms 'wordnet': NLTK or the WordNet data are missing (install the 'wordnet' "
                               "extra and Debian's wordnet-base + wordnet-sense-index), or use 'table'")
        return source
    return default_synonyms()


def default_synonyms() -> SynonymSource:
    """WordNet when NLTK and WordNet data are installed, else the shipped table (with a warning)."""
    source = _wordnet_or_none()
    if source is not None:
        return source
    warnings.warn(
        "EDA: WordNet is not available (install the 'wordnet' extra, i.e. nltk, and Debian's "
        "wordnet-base + wordnet-sense-index); using eftclip's small shipped synonym table instead",
        stacklevel=2,
    )
    return TableSynonyms()


_NON_LETTERS = re.compile(r"[^a-z ]+")


class EDA:
    """Easy Data Augmentation of one caption.

    ``augment(caption, rng) -> str``: picks one of the four operations uniformly
    (as CleanCLIP uses one augmented caption per pair) and changes
    ``n = max(1, round(alpha * words))`` words; deletion drops each word with
    probability ``alpha``.  The caption is first lower-cased and reduced to
    letters and spaces (EDA's cleaning).  A caption without letters is returned
    unchanged instead of crashing.
    """

    OPERATIONS = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")

    def __init__(self, synonyms: SynonymSource | None = None, *, alpha: float = 0.1):
        if not 0 <= alpha <= 1:
            raise ValueError(f"EDA alpha must be in [0, 1], got {alpha}")
        self.synonyms = synonyms if synonyms is not None else default_synonyms()
        self.alpha = alpha

    @staticmethod
    def words(caption: str) -> list[str]:
        cleaned = _NON_LETTERS.sub(" ", caption.replace("-", " ").lower())
        return cleaned.split()

    def augment(self, caption: str, rng: np.random.Generator, operation: str | None = None) -> str:
        words = self.words(caption)
        if not words:
            return caption
        if operation is None:
            operation = self.OPERATIONS[int(rng.integers(len(self.OPERATIONS)))]
        n = max(1, int(round(self.alpha * len(words))))
        out = getattr(self, operation)(words, n, rng)
        return " ".join(out) if out else " ".join(words)

    def synonym_replacement(self, words: list[str], n: int, rng: np.random.Generator) -> list[str]:
        out = list(words)
        candidates = [w for w in dict.fromkeys(words) if w not in STOP_WORDS]
        rng.shuffle(candidates)
        replaced = 0
        for word in candidates:
            options = self.synonyms.synonyms(word)
            if options:
                choice = options[int(rng.integers(len(options)))]
                out = [choice if w == word else w for w in out]
                replaced += 1
            if replaced >= n:
                break
        return " ".join(out).split()

    def random_insertion(self, words: list[str], n: int, rng: np.random.Generator) -> list[str]:
        out = list(words)
        sources = [w for w in words if w not in STOP_WORDS]  # "a" -> "vitamin a" helps nobody
        if not sources:
            return out
        for _ in range(n):
            for _attempt in range(10):
                word = sources[int(rng.integers(len(sources)))]
                options = self.synonyms.synonyms(word)
                if options:
                    out.insert(int(rng.integers(len(out) + 1)), options[int(rng.integers(len(options)))])
                    break
        return " ".join(out).split()

    def random_swap(self, words: list[str], n: int, rng: np.random.Generator) -> list[str]:
        out = list(words)
        if len(out) < 2:
            return out
        for _ in range(n):
            i, j = rng.choice(len(out), size=2, replace=False)
            out[i], out[j] = out[j], out[i]
        return out

    def random_deletion(self, words: list[str], n: int, rng: np.random.Generator) -> list[str]:
        if len(words) == 1:
            return list(words)
        keep = [w for w in words if rng.random() > self.alpha]
        if not keep:
            return [words[int(rng.integers(len(words)))]]
        return keep
