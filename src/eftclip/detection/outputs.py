"""The files of a detection run, written from a :func:`eftclip.detection.decide.decide` result.

``triggers.json`` (K, the rule that made it, every label's evidence),
``affected_labels.csv`` (``label,count,frequency``; frequencies sum to 1),
``metrics.json`` (the headline, every mode beside it, warnings) and
``figure7.png``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

# below this share of confirmed top-1 labels on clean images the oracle cannot tell a trigger from a miss
WEAK_ORACLE = 0.3


def write_outputs(out: Path, result: dict, *, cfg: Any = None, n_listed: int | None = None,
                  skipped_rows: Sequence[dict] = (), seconds: float | None = None, stats: dict | None = None,
                  figure: bool = True) -> dict:
    """Write triggers.json, affected_labels.csv, metrics.json and figure7.png; returns the metrics.

    ``cfg`` is accepted for callers that pass it; nothing here reads it.
    """
    from eftclip.io import write_json

    write_json(out / "triggers.json", triggers_of(result))
    write_profile(out / "affected_labels.csv", result["profile"])
    metrics = metrics_of(result, n_listed=n_listed, skipped_rows=skipped_rows, seconds=seconds, stats=stats)
    write_json(out / "metrics.json", metrics)
    if figure and result["figure"]:
        from eftclip.detection.figures import figure7

        figure7(result["figure"], out / "figure7.png", loader=_figure_loader)
    return metrics


# how triggers.json states the rule that made K, per mode
RULE_TEXT = {
    "faithful": lambda p: ("faithful: every label left unconfirmed by the oracle and by the crops in some image "
                           "(Algorithm 1 as written)"),
    "robust": lambda p: (f"robust: labels judged in >= {p['min_count']} images and unconfirmed by the "
                         f"oracle in >= {p['min_share']} of them"),
}


def triggers_of(result: dict) -> dict:
    """The content of ``triggers.json``."""
    ev, K = result["evidence"], result["K"]
    return {
        "mode": result["params"]["mode"],
        "K": K,
        "rule": RULE_TEXT[result["params"]["mode"]](result["params"]),
        "evidence": {lab: ev[lab].as_dict() for lab in K if lab in ev},
        "K_faithful": result["K_faithful"],
        "K_robust": result["K_robust"],
        "all_evidence": {lab: e.as_dict() for lab, e in sorted(ev.items(), key=lambda kv: -kv[1].share)},
    }


def write_profile(path: Path, profile: Sequence[dict]) -> None:
    """``affected_labels.csv`` from profile rows ``{label, count, frequency}``."""
    from eftclip.io import atomic_open

    with atomic_open(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["label", "count", "frequency"])
        for row in profile:
            w.writerow([row["label"], row["count"], f"{row['frequency']:.6f}"])


def metrics_of(result: dict, *, n_listed: int | None, skipped_rows: Sequence[dict], seconds: float | None,
               stats: dict | None) -> dict:
    """The content of ``metrics.json``: the chosen mode's rates at the top level, every mode under ``by_mode``."""
    K = result["K"]
    return {
        "mode": result["params"]["mode"],
        "chosen": result["chosen"],
        "params": result["params"],
        "n_images": result["n_images"],
        "n_skipped": result["n_errors"] + len(skipped_rows),
        "n_listed": n_listed,
        "K": K,
        "n_triggers": len(K),
        "target": result["target"],
        "target_in_K": result["target_in_K"],
        "likely_target": result["likely_target"],
        "likely_target_in_K": result["likely_target_in_K"],
        **result["metrics"],
        "by_mode": result["metrics_by_mode"],
        "K_faithful": result["K_faithful"],
        "K_robust": result["K_robust"],
        "n_affected_labels": len(result["profile"]),
        "oracle_top1_confirm_rate": result["oracle_top1_confirm_rate"],
        "oracle_top1_confirm_rate_clean": result["oracle_top1_confirm_rate_clean"],
        "warnings": warnings_of(result),
        "seconds": None if seconds is None else round(seconds, 2),
        "pass1": stats,
        "skipped_rows": list(skipped_rows)[:100],
    }


def warnings_of(result: dict) -> list[str]:
    """Plain-language warnings: a weak oracle, or a K too large for one backdoor."""
    out = []
    rate = result["oracle_top1_confirm_rate_clean"]
    if rate is None:
        rate = result["oracle_top1_confirm_rate"]
    if rate is not None and rate < WEAK_ORACLE:
        out.append(
            f"the oracle confirms only {rate:.0%} of CLIP's top-1 labels"
            + (" on clean images" if result["oracle_top1_confirm_rate_clean"] is not None else "")
            + f" at theta {result['params']['theta']}: almost every label looks unconfirmed, so K and the "
            "flags are unreliable (causes: too weak an oracle, too high a theta, or a CLIP whose lists miss the real objects)"
        )
    if len(result["K"]) > max(3, 0.25 * len(result["evidence"] or [1])):
        out.append(f"K holds {len(result['K'])} labels; a backdoor usually has one target: check the evidence "
                   "in triggers.json")
    return out


def _figure_loader(ref: str):
    from eftclip.data.captions import open_image

    return open_image(ref)
