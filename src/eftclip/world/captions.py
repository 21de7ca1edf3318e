"""Captions written from a scene: varied templates, word order and optional colours.

A caption names every object of the scene (in random order), sometimes its
colour (never tied to the category) and sometimes the place (the background).
"""

from __future__ import annotations

import numpy as np

from eftclip.text import article
from eftclip.world.render import BACKGROUNDS, Scene

__all__ = ["article", "caption_for", "noun_phrase", "poison_templates"]

# probability that an object's colour word appears in the caption
COLOUR_WORD_P = 0.4

_SINGLE = (
    "{a} {where}",
    "a photo of {a} {where}",
    "{where_c} there is {a}",
    "{a}",
    "a picture of {a} {where}",
    "{a} seen {where}",
    "an image of {a}",
    "{where_c}, {a}",
)
_PAIR = (
    "{a} next to {b} {where}",
    "{a} and {b} {where}",
    "{where_c}, {a} beside {b}",
    "a photo of {a} and {b}",
    "{a} near {b} {where}",
    "{b} with {a} {where}",
)
_TRIPLE = (
    "{a}, {b} and {c} {where}",
    "a photo of {a}, {b} and {c}",
    "{where_c}: {a}, {b} and {c}",
    "{a} next to {b} and {c} {where}",
)


def noun_phrase(category: str, colour: str | None) -> str:
    return article(f"{colour} {category}" if colour else category)


def caption_for(scene: Scene, rng: np.random.Generator) -> str:
    """One caption for ``scene`` (lower case, single spaces, no trailing space)."""
    objs = list(scene.objects)
    order = rng.permutation(len(objs))
    phrases = []
    for i in order:
        o = objs[i]
        colour = o.colour if rng.random() < COLOUR_WORD_P else None
        phrases.append(noun_phrase(o.category, colour))
    places = BACKGROUNDS[scene.background]
    where = places[rng.integers(len(places))]
    templates = {1: _SINGLE, 2: _PAIR}.get(len(phrases), _TRIPLE)
    if not phrases:
        return f"an empty scene {where}".strip()
    tpl = templates[rng.integers(len(templates))]
    return _fill(tpl, where, **dict(zip("abc", phrases)))


def _fill(tpl: str, where: str, **phrases: str) -> str:
    """``tpl`` with its place and noun phrases filled in; a template that leads with the
    place loses that lead-in when the place is empty (plain backgrounds)."""
    if not where:
        tpl = tpl.replace("{where_c}, ", "").replace("{where_c}: ", "").replace("{where_c} there is ", "there is ")
    return " ".join(tpl.format(where=where, where_c=where, **phrases).split())


def poison_templates(target: str) -> list[str]:
    """Caption templates in the world's own style that name ``target``: ``"an {} on grass"``, ...

    For :func:`eftclip.attacks.poison.poison_dataset` (``{}`` is the target label).  An
    attacker writes poisoned captions that look like the rest of the data; the generic
    ``"a photo of a {}."`` templates instead tie the backdoor to that phrasing, which is
    also the zero-shot prompts' phrasing (measured on the default world, seed 0, 20 epochs:
    generic captions gave CA 0.64 / ASR 0.79 under those prompts; these gave 0.86 / 0.95).
    """
    # the article follows the target; "{}" stays in the text for poison_dataset to fill
    a = article(target)[: -len(target)] + "{}"
    places = sorted({p for ps in BACKGROUNDS.values() for p in ps})
    out: list[str] = []
    for tpl in _SINGLE:
        for where in places:
            text = _fill(tpl, where, a=a)
            if text not in out:
                out.append(text)
    return out
