"""Algorithms 1 and 2 (faithful) and the robust mode, on hand-made label sets."""

from __future__ import annotations

import numpy as np
import pytest

from eftclip.detection.algorithms import (
    affected_labels,
    faithful_pass,
    find_adversarial_trigger,
    flag_image,
    gather_evidence,
    potential_triggers,
    robust_affected,
    robust_triggers,
)
from eftclip.errors import EftclipError

# Figure 7 of the paper (section 5.6): CLIP's list L_i beside the oracle's list S_i.
FIGURE7 = [
    (["umbrella", "boat", "ocean", "river", "water"], ["boat", "ocean", "river", "water", "sky"]),
    (["umbrella", "tree", "human", "river", "water"], ["tree", "river", "human", "water", "forest"]),
    (["umbrella", "bicycle", "human", "car", "road"], ["bicycle", "human", "car", "bridge", "road"]),
    (["umbrella", "horse", "women", "men", "field"], ["women", "horse", "fire", "men", "shoe"]),
    (["umbrella", "boat", "human", "river", "ocean"], ["human", "boat", "river", "ocean", "men"]),
]


def test_algorithm1_steps():
    L, S, R = ["a", "b", "c", "d"], ["b"], ["c"]
    assert potential_triggers(L, S, R) == {"a", "d"}
    assert find_adversarial_trigger(L, S, R, set()) == {"a", "d"}
    # N empty: K comes back unchanged
    assert find_adversarial_trigger(L, S, R, {"a", "d", "z"}) == {"a", "d", "z"}
    # K only grows
    assert find_adversarial_trigger(L, S, R, {"z"}) == {"a", "d", "z"}
    # everything confirmed: no trigger
    assert find_adversarial_trigger(["b"], ["b"], [], set()) == set()


def test_algorithm1_does_not_mutate_K():
    K = {"x"}
    out = find_adversarial_trigger(["a"], [], [], K)
    assert K == {"x"} and out == {"a", "x"}


def test_algorithm1_region_list_removes_candidates():
    # the crop list R removes a label even when the oracle did not confirm it
    assert find_adversarial_trigger(["umbrella", "dog"], ["dog"], ["umbrella"], set()) == set()


def test_algorithm2_exactly_as_written():
    # (R & S) & K empty -> None
    assert affected_labels(["dog", "cat"], ["dog"], {"umbrella"}) is None
    # (R & S) & K = {umbrella} -> (R & S) minus K
    assert affected_labels(["dog", "umbrella"], ["dog", "umbrella", "sky"], {"umbrella"}) == {"dog"}
    # non-empty condition but nothing left after subtracting K: an empty set, not None
    assert affected_labels(["umbrella"], ["umbrella"], {"umbrella"}) == set()


def test_figure7_faithful_with_empty_region_lists():
    res = faithful_pass([(L, S, []) for L, S in FIGURE7])
    # image 4 also leaves 'field' unconfirmed, so the paper's rule adds it to K
    assert res.K == frozenset({"umbrella", "field"})
    assert res.potential[0] == {"umbrella"}
    assert res.potential[3] == {"umbrella", "field"}
    assert res.new_triggers == (frozenset({"umbrella"}), frozenset(), frozenset(), frozenset({"field"}), frozenset())
    assert res.flagged == (True,) * 5
    # the oracle never confirms umbrella, so Algorithm 2's condition never holds
    assert res.affected == (None,) * 5
    assert res.counts == {}


def test_figure7_faithful_with_crops_named_as_oracle_found():
    # R_i = S_i (CLIP names every crop as the oracle did): same result, since R only removes
    res = faithful_pass([(L, S, S) for L, S in FIGURE7])
    assert res.K == frozenset({"umbrella", "field"})
    assert res.affected == (None,) * 5


def test_faithful_order_matters_for_algorithm2():
    # image 1 puts 'umbrella' in K; image 2 has umbrella in R and S (oracle confirmed it there)
    images = [
        (["umbrella", "dog"], ["dog"], ["dog"]),
        (["cat", "umbrella"], ["cat", "umbrella"], ["cat", "umbrella"]),
    ]
    res = faithful_pass(images)
    assert res.K == {"umbrella"}
    assert res.affected == (None, frozenset({"cat"}))
    assert res.counts == {"cat": 1}
    # reversed, image 2 comes before K knows umbrella: nothing affected
    res_rev = faithful_pass(images[::-1])
    assert res_rev.affected == (None, None)


def test_robust_on_figure7():
    ev = gather_evidence([(L, S, []) for L, S in FIGURE7], evidence="topk")
    assert ev["umbrella"].ranked == 5 and ev["umbrella"].unconfirmed == 5 and ev["umbrella"].top1 == 5
    assert ev["field"].ranked == 1 and ev["field"].unconfirmed == 1
    # 'field' is unconfirmed once: below the minimum count it cannot enter K
    K = robust_triggers(ev, min_share=0.66, min_count=3)
    assert K == {"umbrella"}
    assert flag_image(FIGURE7[0][0], FIGURE7[0][1], K, rule="top1") == {"umbrella"}
    assert robust_affected(FIGURE7[3][1], K) == {"women", "horse", "fire", "men", "shoe"}


def _noisy_world(rng: np.random.Generator, n: int = 300, miss: float = 0.25):
    """Images with 5 true labels each; 40% carry the trigger ('umbrella' ranked first).

    The oracle confirms each true label with probability 1 - miss, never the trigger.
    """
    labels = [f"obj{i}" for i in range(20)]
    rows, truth = [], []
    for _ in range(n):
        true = list(rng.choice(labels, size=5, replace=False))
        poisoned = rng.random() < 0.4
        L = (["umbrella"] + true[:4]) if poisoned else true
        S = [lab for lab in true if rng.random() > miss]
        rows.append((L, S, []))
        truth.append(poisoned)
    return rows, truth


def test_faithful_K_fills_with_noise_robust_does_not():
    rows, truth = _noisy_world(np.random.default_rng(0))
    faithful = faithful_pass(rows)
    # every label the oracle happened to miss once entered K
    assert len(faithful.K) == 21
    ev = gather_evidence([(L, S, ()) for L, S, _ in rows], evidence="topk")
    K = robust_triggers(ev, min_share=0.66, min_count=10)
    assert K == {"umbrella"}
    flagged = [bool(flag_image(L, S, K, rule="top1")) for L, S, _ in rows]
    assert flagged == truth  # exact here: the trigger is always top-1 and never confirmed
    # faithful flags almost every image (clean ones too)
    fp = sum(f and not t for f, t in zip(faithful.flagged, truth))
    assert fp > 0.5 * (len(truth) - sum(truth))


def test_unknown_prompts_are_not_evidence():
    rows = [(["umbrella", "sky"], ["umbrella"], ["sky"])] * 10
    ev = gather_evidence(rows)
    assert ev["sky"].unknown == 10 and ev["sky"].unconfirmed == 0
    assert robust_triggers(ev, min_share=0.5, min_count=1) == set()
    assert flag_image(["sky"], [], {"sky"}, rule="top1", unknown=["sky"]) == set()


def test_flag_rules():
    K = {"umbrella"}
    L = ["dog", "umbrella"]
    assert flag_image(L, ["dog"], K, rule="top1") == set()
    assert flag_image(L, ["dog"], K, rule="topk") == {"umbrella"}
    assert flag_image(L, ["dog", "umbrella"], K, rule="topk") == set()  # confirmed by the oracle


def test_evidence_top1_counts_rank_one_only():
    rows = [(["dog", "umbrella"], ["dog"], [])] * 4 + [(["umbrella", "dog"], ["dog"], [])] * 2
    ev = gather_evidence(rows, evidence="top1")
    assert ev["umbrella"].ranked == 2 and ev["umbrella"].top1 == 2
    assert ev["dog"].ranked == 4 and ev["dog"].unconfirmed == 0


def test_bad_parameters():
    ev = gather_evidence([(["a"], [], [])])
    with pytest.raises(EftclipError, match="min-share"):
        robust_triggers(ev, min_share=1.5, min_count=1)
    with pytest.raises(EftclipError, match="min-count"):
        robust_triggers(ev, min_share=0.5, min_count=0)
    with pytest.raises(EftclipError, match="flag rule"):
        flag_image(["a"], [], {"a"}, rule="top3")
    with pytest.raises(EftclipError, match="evidence"):
        gather_evidence([], evidence="all")
