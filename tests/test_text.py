"""The neutral caption grammar (eftclip.text) and the world's use of it."""

from __future__ import annotations

import numpy as np
import pytest

from eftclip.errors import EftclipError
from eftclip.text import article, join_phrases, naming_caption


def test_article_follows_the_first_letter():
    assert article("umbrella") == "an umbrella"
    assert article("red umbrella") == "a red umbrella"
    assert article("Orange cup") == "an Orange cup"


def test_naming_caption_lists_labels_in_order_without_repeats():
    assert naming_caption(["arrow", "moon"]) == "an arrow and a moon"
    assert naming_caption(["boat"]) == "a boat"
    assert naming_caption(["arrow", "car", "moon", "car"]) == "an arrow, a car and a moon"
    assert join_phrases(["x", "y", "z"]) == "x, y and z"
    with pytest.raises(EftclipError):
        naming_caption([])


def test_world_captions_use_the_neutral_rule_and_stay_the_same():
    import eftclip.world.captions as wc
    from eftclip.world.render import Scene, SceneObject

    assert wc.article is article
    assert wc.noun_phrase("umbrella", "orange") == "an orange umbrella"
    mask = np.zeros((4, 4), bool)
    objs = tuple(SceneObject(c, col, (1, 2, 3), (0, 0, 1, 1), mask)
                 for c, col in [("umbrella", "orange"), ("arrow", "red"), ("moon", "blue")])

    def caption(seed, background, k):
        return wc.caption_for(Scene(np.zeros((4, 4, 3), np.uint8), background, objs[:k]), np.random.default_rng(seed))

    # produced by the world's captions before the rule moved to eftclip.text (same seeds, same scenes)
    assert caption(0, "grass", 2) == "an orange umbrella next to a red arrow on the grass"
    assert caption(1, "plain", 2) == "an umbrella near a red arrow on a plain background"
    assert caption(2, "sand", 3) == "on the beach: a blue moon, an umbrella and a red arrow"
    assert caption(5, "sand", 3) == "an arrow, a moon and an orange umbrella on the sand"
    assert wc.poison_templates("umbrella")[0].startswith("an {}")
