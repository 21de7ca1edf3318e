"""Matrix statistics against hand computations on known numbers."""

from __future__ import annotations

import math

import pytest

from eftclip.pipeline.statistics import describe, paired, resolved, sentences, summarise


def test_describe_is_the_mean_sd_and_t_interval():
    # 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t(0.975, 2) = 4.302653, half width 4.302653 * 0.1 / sqrt(3) = 0.248414
    s = describe([0.1, 0.2, 0.3])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(0.1)
    assert s["ci95"] == pytest.approx([0.2 - 0.248414, 0.2 + 0.248414], abs=1e-6)
    one = describe([0.5, None])
    assert one == {"mean": 0.5, "sd": None, "ci95": None, "n": 1, "n_nonfinite": 0, "method": "t"}
    assert describe([])["mean"] is None
    diverged = describe([float("nan"), 0.4])
    assert diverged["n"] == 1 and diverged["n_nonfinite"] == 1, "a non-finite value is counted, not averaged"


def test_paired_differences_and_resolution():
    # differences -0.5, -0.4, -0.6: mean -0.5, sd 0.1 -> interval [-0.748, -0.252], excludes zero
    d = paired([0.1, 0.2, 0.0], [0.6, 0.6, 0.6])
    assert d["mean"] == pytest.approx(-0.5) and resolved(d) is True
    assert d["ci95"][1] == pytest.approx(-0.5 + 0.248414, abs=1e-6)
    # differences +0.1, -0.1: the interval holds zero
    assert resolved(paired([0.3, 0.1], [0.2, 0.2])) is False
    assert resolved(paired([0.3], [0.2])) is None


def _cell(attack, seed, clean_ca, p, defenses):
    return {"attack": {"name": attack}, "seed": seed, "clean": {"ca": clean_ca},
            "poisoned": {"ca": p[0], "asr": p[1]},
            "defenses": {n: {"ca": ca, "asr": asr, "finetune_pairs": pairs} for n, (ca, asr, pairs) in defenses.items()}}


def test_summary_schema_and_numbers():
    cells = [
        _cell("badnet", 0, 0.90, (0.88, 0.99), {"eftclip": (0.87, 0.01, 100), "cleanclip": (0.85, 0.20, 100)}),
        _cell("badnet", 1, 0.92, (0.86, 0.97), {"eftclip": (0.85, 0.03, 100), "cleanclip": (0.84, 0.30, 100)}),
        _cell("blended", 0, 0.90, (0.80, 0.95), {"eftclip": (0.79, 0.05, 100), "cleanclip": (0.78, 0.10, 100)}),
        _cell("blended", 1, 0.92, (0.82, 0.93), {"eftclip": (0.81, 0.07, 100), "cleanclip": (0.80, 0.10, 100)}),
    ]
    s = summarise(cells)
    assert s["defenses"]["eftclip"]["badnet"]["asr"]["mean"] == pytest.approx(0.02)
    assert s["defenses"]["eftclip"]["badnet"]["pairs"] == 100
    # paired ASR differences on badnet: -0.19, -0.27 -> mean -0.23, sd 0.0565685, t(0.975, 1) = 12.7062
    d = s["paired"]["eftclip-vs-cleanclip"]["badnet"]["asr"]
    half = 12.706205 * math.sqrt(0.0032) / math.sqrt(2)
    assert d["mean"] == pytest.approx(-0.23) and d["ci95"] == pytest.approx([-0.23 - half, -0.23 + half], abs=1e-5)
    assert s["poisoned"]["blended"]["ca"]["mean"] == pytest.approx(0.81)
    # the clean model is one per seed: two values, not four
    assert s["clean"]["ca"]["n"] == 2 and s["clean"]["ca"]["mean"] == pytest.approx(0.91)
    assert "cleanclip-vs-eftclip" not in s["paired"]
    words = sentences(s)
    assert any("badnet: eftclip vs cleanclip, ASR -23.0 points" in w and "not resolved" in w for w in words)
