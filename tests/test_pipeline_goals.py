"""The goals tables: each bar comes from the config (the world's by default, a preset's own otherwise)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from eftclip.errors import EftclipError
from eftclip.pipeline.goals import GoalThresholds, cell_goals, matrix_goals
from eftclip.pipeline.presets import config_from_mapping

SUMMARY = {
    "poisoned": {"badnet": {"ca": {"mean": 0.42}}},
    "defenses": {"eftclip": {"badnet": {"asr": {"mean": 0.098}, "ca": {"mean": 0.405}}}},
    "paired": {"eftclip-vs-cleanclip_large": {"badnet": {"asr": {"mean": -0.6, "ci95": [-0.9, -0.3]}}}},
}


def _met(goals: list[dict]) -> dict:
    return {g["goal"]: g["met"] for g in goals}


def test_matrix_goals_follow_the_configured_bars():
    world = _met(matrix_goals(SUMMARY, GoalThresholds()))
    assert world == {"badnet: eftclip mean ASR <= 0.02": False,
                     "badnet: eftclip mean CA within 0.01 of the poisoned model": False,
                     "badnet: eftclip ASR below cleanclip_large's (paired interval below zero)": True}
    cifar = _met(matrix_goals(SUMMARY, GoalThresholds(matrix_asr_max=0.10, matrix_ca_drop_max=0.02)))
    assert cifar["badnet: eftclip mean ASR <= 0.10"] is True
    assert cifar["badnet: eftclip mean CA within 0.02 of the poisoned model"] is True


def test_cell_goals_use_the_configured_bars_and_say_none_when_a_value_is_missing():
    m = {"clean": {"ca": 0.41}, "poisoned": {"ca": 0.40, "asr": 0.99},
         "detection": {"target_found": True, "detection_rate": 0.9, "false_positive_rate": None},
         "defenses": {"eftclip": {"ca": 0.38, "asr": 0.05}}}
    cfg = SimpleNamespace(goals=GoalThresholds(poisoned_ca_min=0.35), time_goal_s=None, quick=False)
    met = _met(cell_goals(m, cfg, wall_seconds=None))
    assert met["poisoned CA >= 0.35 and within 0.03 of the clean CA"] is True
    assert met["false-positive rate <= 0.05"] is None
    assert met["eftclip CA >= poisoned CA - 0.03"] is True and met["eftclip ASR <= 0.10"] is True
    cfg = SimpleNamespace(goals=GoalThresholds(), time_goal_s=None, quick=False)
    assert _met(cell_goals(m, cfg, wall_seconds=None))["poisoned CA >= 0.60 and within 0.03 of the clean CA"] is False


def test_goals_from_yaml_and_the_cifar_preset():
    from eftclip.pipeline.presets import load_experiment

    cfg = config_from_mapping({"goals": {"matrix_asr_max": 0.05}})
    assert cfg.goals == GoalThresholds(matrix_asr_max=0.05)
    assert load_experiment("cifar10").goals.matrix_ca_drop_max == 0.02
    assert load_experiment("demo").goals == GoalThresholds()
    with pytest.raises(EftclipError, match="matrix_asr"):
        config_from_mapping({"goals": {"matrix_asr": 0.05}})
