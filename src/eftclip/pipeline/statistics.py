"""Statistics over a matrix: means with 95% intervals, and paired differences between defenses.

Each defense and attack is summarised over its cells (seeds, and targets when the matrix
has several) by the mean, the sample standard deviation and a two-sided 95% Student-t
interval, mean +- t(0.975, n-1) * sd / sqrt(n).  With n = 1 there is no interval (null).
A defense is compared with a baseline *paired*: the difference is taken per cell (same
seed, same poisoned model), then summarised the same way.  A difference is *resolved*
when its interval excludes zero.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

METHOD = "t"  # two-sided Student-t interval over cells


def describe(values: Iterable[float | None]) -> dict:
    """``{"mean", "sd", "ci95": [lo, hi] | None, "n", "method"}`` over the non-null values."""
    given = [float(v) for v in values if v is not None]
    xs = [x for x in given if math.isfinite(x)]
    n, dropped = len(xs), len(given) - len(xs)  # a diverged cell is reported, never silently averaged away
    if n == 0:
        return {"mean": None, "sd": None, "ci95": None, "n": 0, "n_nonfinite": dropped, "method": METHOD}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "sd": None, "ci95": None, "n": 1, "n_nonfinite": dropped, "method": METHOD}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "n": n, "n_nonfinite": dropped,
            "method": METHOD}


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def resolved(stat: dict) -> bool | None:
    """True when the 95% interval excludes zero; None without an interval."""
    ci = stat.get("ci95")
    if not ci:
        return None
    return ci[0] > 0 or ci[1] < 0


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> dict:
    """``describe`` of the per-cell differences a - b (cells missing either value are left out)."""
    return describe(x - y for x, y in zip(a, b) if x is not None and y is not None)


def summarise(cells: list[dict], baselines: Sequence[str] = ("cleanclip", "cleanclip_large")) -> dict:
    """The ``summary.json`` of a matrix.

    ``cells``: each cell's metrics (``attack.name``, ``seed``, ``target``, ``clean``,
    ``poisoned``, ``defenses: {NAME: {ca, asr, finetune_pairs}}``).  Returns
    ``{"method", "defenses": {NAME: {ATTACK: {"ca", "asr", "pairs"}}}, "paired":
    {"NAME-vs-BASE": {ATTACK: {"ca", "asr"}}}, "poisoned": {ATTACK: {...}}, "clean": {"ca"}}``.
    """
    by_attack: dict[str, list[dict]] = {}
    for cell in cells:
        by_attack.setdefault(cell["attack"]["name"], []).append(cell)
    names = list(dict.fromkeys(n for c in cells for n in c["defenses"]))
    out = {"method": "mean over cells (seeds x targets); ci95: two-sided Student-t interval; paired: "
                     "per-cell difference defense - baseline", "defenses": {}, "paired": {}, "poisoned": {}}
    for attack, group in by_attack.items():
        out["poisoned"][attack] = {m: describe(c["poisoned"][m] for c in group) for m in ("ca", "asr")}
        for name in names:
            rows = [c["defenses"].get(name) or {} for c in group]
            out["defenses"].setdefault(name, {})[attack] = {
                **{m: describe(r.get(m) for r in rows) for m in ("ca", "asr")},
                "pairs": next((r.get("finetune_pairs") for r in rows if r.get("finetune_pairs") is not None), None)}
        for name in (n for n in names if n not in baselines):
            for base in (b for b in baselines if b in names):
                a = [c["defenses"].get(name, {}) for c in group]
                b = [c["defenses"].get(base, {}) for c in group]
                out["paired"].setdefault(f"{name}-vs-{base}", {})[attack] = {
                    m: paired([x.get(m) for x in a], [y.get(m) for y in b]) for m in ("ca", "asr")}
    seeds_seen: dict[int, float | None] = {}
    for cell in cells:  # the clean model is one per seed, shared by every attack
        seeds_seen.setdefault(cell["seed"], cell["clean"]["ca"])
    out["clean"] = {"ca": describe(seeds_seen.values())}
    return out


def sentences(summary: dict) -> list[str]:
    """Plain words: which paired differences are resolved (interval excludes zero) and which not."""
    lines = []
    for pair, per_attack in summary["paired"].items():
        name, base = pair.split("-vs-", 1)
        for attack, stats in per_attack.items():
            for metric in ("asr", "ca"):
                s = stats[metric]
                if s["mean"] is None:
                    continue
                lines.append(_sentence(name, base, attack, metric, s))
    return lines


def _sentence(name: str, base: str, attack: str, metric: str, s: dict) -> str:
    label = metric.upper()
    diff = f"{100 * s['mean']:+.1f} points"
    if s["ci95"] is None:
        return f"{attack}: {name} vs {base}, {label} {diff} (one cell: no interval, not resolved)."
    lo, hi = (100 * x for x in s["ci95"])
    verdict = "resolved" if resolved(s) else "not resolved (the interval holds zero)"
    return f"{attack}: {name} vs {base}, {label} {diff}, 95% interval [{lo:+.1f}, {hi:+.1f}], n={s['n']}: {verdict}."
