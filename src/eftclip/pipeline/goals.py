"""The goals an experiment is held to, each with its measured value: one table for the demo
and the study alike.

Per cell: the poisoned model really is poisoned, detection finds the target, the defense
under test (``eftclip``, else ``eftclip_paper``) removes the backdoor without costing much
clean accuracy.  Over the matrix: the repair goals, judged on means and paired intervals.
"""

from __future__ import annotations

from typing import Any

# thresholds (fractions); each goal's text is built from them
POISONED_ASR_MIN = 0.90
POISONED_CA_MIN = 0.60
POISONED_CA_GAP_MAX = 0.03
DETECTION_RATE_MIN = 0.85
FPR_MAX = 0.05
DEFENSE_ASR_MAX = 0.10
DEFENSE_CA_DROP_MAX = 0.03
MATRIX_ASR_MAX = 0.02
MATRIX_CA_DROP_MAX = 0.01
UNDER_TEST = ("eftclip", "eftclip_paper")


def _check(goal: str, measured: str, ok: Any) -> dict:
    return {"goal": goal, "measured": measured, "met": None if ok is None else bool(ok)}


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _have(*xs: Any) -> bool:
    return all(x is not None for x in xs)


def under_test(defenses: dict) -> str | None:
    return next((name for name in UNDER_TEST if name in defenses), None)


def cell_goals(m: dict, cfg: Any, *, wall_seconds: float | None) -> list[dict]:
    """``[{"goal", "measured", "met"}]`` for one cell; ``met`` is None when a value is missing."""
    c, p, d = m["clean"], m["poisoned"], m["detection"]
    name = under_test(m["defenses"]) or "eftclip"
    e = m["defenses"].get(name, {})
    goals = [
        _check(f"poisoned ASR >= {POISONED_ASR_MIN:.2f}", _num(p["asr"]),
               p["asr"] >= POISONED_ASR_MIN if _have(p["asr"]) else None),
        _check(f"poisoned CA >= {POISONED_CA_MIN:.2f} and within {POISONED_CA_GAP_MAX:.2f} of the clean CA",
               f"{_num(p['ca'])} (clean {_num(c['ca'])})",
               p["ca"] >= POISONED_CA_MIN and c["ca"] - p["ca"] <= POISONED_CA_GAP_MAX if _have(p["ca"], c["ca"])
               else None),
        _check("detection finds the target", str(d["target_found"]), d["target_found"]),
        _check(f"detection rate >= {DETECTION_RATE_MIN:.2f}", _num(d["detection_rate"]),
               d["detection_rate"] >= DETECTION_RATE_MIN if _have(d["detection_rate"]) else None),
        _check(f"false-positive rate <= {FPR_MAX:.2f}", _num(d["false_positive_rate"]),
               d["false_positive_rate"] <= FPR_MAX if _have(d["false_positive_rate"]) else None),
        _check(f"{name} ASR <= {DEFENSE_ASR_MAX:.2f}", _num(e.get("asr")),
               e.get("asr") <= DEFENSE_ASR_MAX if _have(e.get("asr")) else None),
        _check(f"{name} CA >= poisoned CA - {DEFENSE_CA_DROP_MAX:.2f}", f"{_num(e.get('ca'))} (poisoned {_num(p['ca'])})",
               e.get("ca") >= p["ca"] - DEFENSE_CA_DROP_MAX if _have(e.get("ca"), p["ca"]) else None),
    ]
    if cfg.time_goal_s is not None and not cfg.quick:
        goals.append(_check(f"the whole run within {cfg.time_goal_s / 60:.0f} minutes of wall time",
                            "not measured: stages reused from a shared cache" if wall_seconds is None
                            else f"{wall_seconds:.0f} s", None if wall_seconds is None
                            else wall_seconds <= cfg.time_goal_s))
    return goals


def matrix_goals(summary: dict, *, baseline: str = "cleanclip_large") -> list[dict]:
    """The repair goals per attack for ``eftclip``: mean ASR, mean CA drop, and a resolved win
    over ``baseline`` (the paired ASR difference's interval below zero)."""
    from eftclip.pipeline.statistics import resolved

    goals = []
    per_attack = summary["defenses"].get("eftclip", {})
    for attack, stats in per_attack.items():
        asr, ca = stats["asr"]["mean"], stats["ca"]["mean"]
        p_ca = summary["poisoned"][attack]["ca"]["mean"]
        goals.append(_check(f"{attack}: eftclip mean ASR <= {MATRIX_ASR_MAX:.2f}", _num(asr),
                            asr <= MATRIX_ASR_MAX if _have(asr) else None))
        goals.append(_check(f"{attack}: eftclip mean CA within {MATRIX_CA_DROP_MAX:.2f} of the poisoned model",
                            f"{_num(ca)} (poisoned {_num(p_ca)})",
                            ca >= p_ca - MATRIX_CA_DROP_MAX if _have(ca, p_ca) else None))
        diff = summary["paired"].get(f"eftclip-vs-{baseline}", {}).get(attack, {}).get("asr")
        if diff:
            ci = diff["ci95"]
            measured = f"{_num(diff['mean'])} [{_num(ci[0])}, {_num(ci[1])}]" if ci else f"{_num(diff['mean'])} (n=1)"
            ok = None if ci is None else (resolved(diff) and diff["mean"] < 0)
            goals.append(_check(f"{attack}: eftclip ASR below {baseline}'s (paired interval below zero)",
                                measured, ok))
    return goals
