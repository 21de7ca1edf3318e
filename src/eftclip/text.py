"""Plain English for captions: the indefinite article and lists of things.

Neutral ground for every layer that writes captions (the built-in world's
scene captions, curation's unlearning pairs), so none of them has to import
another's module for a grammar rule.  Input and output are lower-case
strings as the callers give them; nothing here reads a vocabulary.
"""

from __future__ import annotations

from typing import Sequence

from eftclip.errors import EftclipError


def article(phrase: str) -> str:
    """``"an umbrella"``, ``"a red umbrella"``: ``phrase`` with its indefinite article.

    The rule is the spelling one (a leading vowel letter takes "an"), which is
    what the world's captions have always used.
    """
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def join_phrases(phrases: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``; one phrase is returned as it is."""
    phrases = list(phrases)
    if not phrases:
        raise EftclipError("cannot join an empty list of phrases into a caption")
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def naming_caption(labels: Sequence[str]) -> str:
    """A caption that names ``labels`` and nothing else: ``["arrow", "moon"]`` -> ``"an arrow and a moon"``.

    Labels keep the given order (callers pass them sorted for reproducible
    captions); duplicates are dropped.
    """
    unique = list(dict.fromkeys(lab.strip() for lab in labels if lab and lab.strip()))
    if not unique:
        raise EftclipError("a naming caption needs at least one label")
    return join_phrases([article(lab) for lab in unique])
