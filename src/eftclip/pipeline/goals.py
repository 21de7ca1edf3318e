"""The goals an experiment is held to, each with its measured value: one table for the demo
and the study alike.

Per cell: the poisoned model really is poisoned, detection finds the target, the defense
under test (``eftclip``, else ``eftclip_paper``) removes the backdoor without costing much
clean accuracy.  Over the matrix: the repair goals, judged on means and paired intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNDER_TEST = ("eftclip", "eftclip_paper")


@dataclass(frozen=True)
class GoalThresholds:
    """The bars an experiment's goals table holds it to (fractions); each goal's text is built from them.
    The defaults are the built-in world's; a preset on other data states its own (``goals:`` in the YAML)."""

    poisoned_asr_min: float = 0.90  # the attack took: the poisoned model's ASR at least this
    poisoned_ca_min: float = 0.60  # the poisoned model is a usable classifier: CA at least this
    poisoned_ca_gap_max: float = 0.03  # and at most this far below the clean model's CA
    detection_rate_min: float = 0.85  # share of triggered detection images flagged
    fpr_max: float = 0.05  # share of clean detection images flagged
    defense_asr_max: float = 0.10  # per cell: the defense under test leaves at most this ASR
    defense_ca_drop_max: float = 0.03  # per cell: and costs at most this much CA
    matrix_asr_max: float = 0.02  # over the matrix: eftclip's mean ASR per attack at most this
    matrix_ca_drop_max: float = 0.01  # over the matrix: eftclip's mean CA at most this far below the poisoned model's


def _check(goal: str, measured: str, ok: Any) -> dict:
    return {"goal": goal, "measured": measured, "met": None if ok is None else bool(ok)}


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _have(*xs: Any) -> bool:
    return all(x is not None for x in xs)


def under_test(defenses: dict) -> str | None:
    return next((name for name in UNDER_TEST if name in defenses), None)


def cell_goals(m: dict, cfg: Any, *, wall_seconds: float | None) -> list[dict]:
    """``[{"goal", "measured", "met"}]`` for one cell (bars: ``cfg.goals``); ``met`` is None when a value is missing."""
    c, p, d = m["clean"], m["poisoned"], m["detection"]
    g: GoalThresholds = cfg.goals
    name = under_test(m["defenses"]) or "eftclip"
    e = m["defenses"].get(name, {})
    goals = [
        _check(f"poisoned ASR >= {g.poisoned_asr_min:.2f}", _num(p["asr"]),
               p["asr"] >= g.poisoned_asr_min if _have(p["asr"]) else None),
        _check(f"poisoned CA >= {g.poisoned_ca_min:.2f} and within {g.poisoned_ca_gap_max:.2f} of the clean CA",
               f"{_num(p['ca'])} (clean {_num(c['ca'])})",
               p["ca"] >= g.poisoned_ca_min and c["ca"] - p["ca"] <= g.poisoned_ca_gap_max if _have(p["ca"], c["ca"])
               else None),
        _check("detection finds the target", str(d["target_found"]), d["target_found"]),
        _check(f"detection rate >= {g.detection_rate_min:.2f}", _num(d["detection_rate"]),
               d["detection_rate"] >= g.detection_rate_min if _have(d["detection_rate"]) else None),
        _check(f"false-positive rate <= {g.fpr_max:.2f}", _num(d["false_positive_rate"]),
               d["false_positive_rate"] <= g.fpr_max if _have(d["false_positive_rate"]) else None),
        _check(f"{name} ASR <= {g.defense_asr_max:.2f}", _num(e.get("asr")),
               e.get("asr") <= g.defense_asr_max if _have(e.get("asr")) else None),
        _check(f"{name} CA >= poisoned CA - {g.defense_ca_drop_max:.2f}",
               f"{_num(e.get('ca'))} (poisoned {_num(p['ca'])})",
               e.get("ca") >= p["ca"] - g.defense_ca_drop_max if _have(e.get("ca"), p["ca"]) else None),
    ]
    if cfg.time_goal_s is not None and not cfg.quick:
        goals.append(_check(f"the whole run within {cfg.time_goal_s / 60:.0f} minutes of wall time",
                            "not measured: stages reused from a shared cache" if wall_seconds is None
                            else f"{wall_seconds:.0f} s", None if wall_seconds is None
                            else wall_seconds <= cfg.time_goal_s))
    return goals


def matrix_goals(summary: dict, g: GoalThresholds, *, baseline: str = "cleanclip_large") -> list[dict]:
    """The repair goals per attack for ``eftclip``: mean ASR, mean CA drop (bars: ``g``), and a resolved
    win over ``baseline`` (the paired ASR difference's interval below zero)."""
    from eftclip.pipeline.statistics import resolved

    goals = []
    per_attack = summary["defenses"].get("eftclip", {})
    for attack, stats in per_attack.items():
        asr, ca = stats["asr"]["mean"], stats["ca"]["mean"]
        p_ca = summary["poisoned"][attack]["ca"]["mean"]
        goals.append(_check(f"{attack}: eftclip mean ASR <= {g.matrix_asr_max:.2f}", _num(asr),
                            asr <= g.matrix_asr_max if _have(asr) else None))
        goals.append(_check(f"{attack}: eftclip mean CA within {g.matrix_ca_drop_max:.2f} of the poisoned model",
                            f"{_num(ca)} (poisoned {_num(p_ca)})",
                            ca >= p_ca - g.matrix_ca_drop_max if _have(ca, p_ca) else None))
        diff = summary["paired"].get(f"eftclip-vs-{baseline}", {}).get(attack, {}).get("asr")
        if diff:
            ci = diff["ci95"]
            measured = f"{_num(diff['mean'])} [{_num(ci[0])}, {_num(ci[1])}]" if ci else f"{_num(diff['mean'])} (n=1)"
            ok = None if ci is None else (resolved(diff) and diff["mean"] < 0)
            goals.append(_check(f"{attack}: eftclip ASR below {baseline}'s (paired interval below zero)",
                                measured, ok))
    return goals
