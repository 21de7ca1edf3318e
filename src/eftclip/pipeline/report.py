"""The demo's (and study's) report: paper-shaped tables, detection figures, plots."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from eftclip.io import write_text
from eftclip.reporting.plots import ca_asr_bars
from eftclip.reporting.tables import Table, format_fraction, write_table

ROW_NAMES = {
    "clean": "Original CLIP (clean pre-training)",
    "poisoned": "Poisoned CLIP",
    "cleanclip": "CleanCLIP (random subset, same size)",
    "cleanclip_large": "CleanCLIP (random subset, larger)",
    "eftclip": "EftCLIP (curated set)",
    "eftclip_repair": "EftCLIP + repair pairs (flagged images, oracle captions)",
}


def results_table(metrics: dict, title: str) -> Table:
    """Tables 2/3 of the paper: CA and ASR per model, with fine-tuning pairs and seconds."""
    table = Table(title=title, columns=["Model", "CA", "ASR", "fine-tuning pairs", "seconds"],
                  percent=["CA", "ASR"])
    table.add(Model=ROW_NAMES["clean"], CA=metrics["clean"]["ca"], ASR=metrics["clean"]["asr"])
    table.add(Model=ROW_NAMES["poisoned"], CA=metrics["poisoned"]["ca"], ASR=metrics["poisoned"]["asr"])
    for name in ("cleanclip", "cleanclip_large", "eftclip", "eftclip_repair"):
        d = metrics["defenses"].get(name)
        if d:
            table.add(Model=ROW_NAMES[name], CA=d["ca"], ASR=d["asr"], **{
                "fine-tuning pairs": d["finetune_pairs"], "seconds": d["seconds"]})
    return table


def attack_table(rows: list[dict]) -> Table:
    """Table 5 of the paper: each attack's CA/ASR before and after EftCLIP (and CleanCLIP)."""
    table = Table(title="Table 5: CA and ASR before and after fine-tuning, per attack",
                  columns=["Attack", "CA before", "ASR before", "CA EftCLIP", "ASR EftCLIP",
                           "CA CleanCLIP", "ASR CleanCLIP"],
                  percent=["CA before", "ASR before", "CA EftCLIP", "ASR EftCLIP", "CA CleanCLIP",
                           "ASR CleanCLIP"])
    for m in rows:
        e = m["defenses"].get("eftclip", {})
        c = m["defenses"].get("cleanclip", {})
        table.add(**{"Attack": m["attack"]["name"], "CA before": m["poisoned"]["ca"],
                     "ASR before": m["poisoned"]["asr"], "CA EftCLIP": e.get("ca"), "ASR EftCLIP": e.get("asr"),
                     "CA CleanCLIP": c.get("ca"), "ASR CleanCLIP": c.get("asr")})
    return table


def detection_table(metrics: dict) -> Table:
    d = metrics["detection"]
    table = Table(title="Trigger detection (Algorithms 1 and 2)",
                  columns=["triggers K", "target found", "detection rate", "precision", "false-positive rate"],
                  percent=["detection rate", "precision", "false-positive rate"])
    table.add(**{"triggers K": ", ".join(d["triggers"]) or "(none)", "target found": d["target_found"],
                 "detection rate": d["detection_rate"], "precision": d["precision"],
                 "false-positive rate": d["false_positive_rate"]})
    return table


def profile_table(profile: dict[str, int]) -> Table:
    total = sum(profile.values()) or 1
    table = Table(title="Affected-label profile (frequencies drive the curated set)",
                  columns=["label", "count", "frequency"], percent=["frequency"])
    for label, count in profile.items():
        table.add(label=label, count=count, frequency=count / total)
    return table


def verdict(metrics: dict) -> list[str]:
    """Plain sentences comparing EftCLIP with CleanCLIP at the same size, whatever they show."""
    lines = []
    e, c = metrics["defenses"].get("eftclip"), metrics["defenses"].get("cleanclip")
    p = metrics["poisoned"]
    if e and c and e["asr"] is not None and c["asr"] is not None:
        if e["asr"] < c["asr"]:
            lines.append(f"At the same fine-tuning size ({e['finetune_pairs']} pairs), EftCLIP's curated set left a "
                         f"lower ASR ({format_fraction(e['asr'])}) than CleanCLIP's random subset "
                         f"({format_fraction(c['asr'])}).")
        else:
            lines.append(f"At the same fine-tuning size ({e['finetune_pairs']} pairs), EftCLIP did NOT beat "
                         f"CleanCLIP: ASR {format_fraction(e['asr'])} against {format_fraction(c['asr'])}.")
        if p["asr"] and min(e["asr"], c["asr"]) > 0.5 * p["asr"]:
            lines.append("Neither fine-tune removed most of the backdoor. Both use the same objective and budget, "
                         "and the curated set only changes which labels its clean pairs show; clean pairs never "
                         "show the trigger, so the trigger's link to the target is only weakened indirectly.")
    if e and p["ca"] is not None and e["ca"] is not None:
        lines.append(f"EftCLIP's CA moved by {100 * (e['ca'] - p['ca']):+.1f} points from the poisoned model's.")
    r = metrics["defenses"].get("eftclip_repair")
    if r and r["asr"] is not None and r["ca"] is not None:
        lines.append(f"With repair pairs (flagged, triggered detection images captioned with the oracle's labels; "
                     f"our extension) the ASR is {format_fraction(r['asr'])} at CA {format_fraction(r['ca'])}: "
                     "these pairs do show the trigger beside the right caption.")
    return lines


def goal_checks(metrics: dict) -> list[dict]:
    """The demo's acceptance goals (the issue that specified the demo), each with its measured value.

    Returns ``[{"goal", "measured", "met"}]``; ``met`` is None when a value is missing.
    """
    c, p, d = metrics["clean"], metrics["poisoned"], metrics["detection"]
    e = metrics["defenses"].get("eftclip", {})

    def check(goal: str, measured: str, ok: Any) -> dict:
        return {"goal": goal, "measured": measured, "met": None if ok is None else bool(ok)}

    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    def have(*xs: Any) -> bool:
        return all(x is not None for x in xs)

    return [
        check("poisoned ASR >= 0.90", num(p["asr"]), p["asr"] >= 0.90 if have(p["asr"]) else None),
        check("poisoned CA >= 0.60 and within 0.03 of the clean CA",
              f"{num(p['ca'])} (clean {num(c['ca'])})",
              p["ca"] >= 0.60 and c["ca"] - p["ca"] <= 0.03 if have(p["ca"], c["ca"]) else None),
        check("detection finds the target", str(d["target_found"]), d["target_found"]),
        check("detection rate >= 0.85", num(d["detection_rate"]),
              d["detection_rate"] >= 0.85 if have(d["detection_rate"]) else None),
        check("false-positive rate <= 0.05", num(d["false_positive_rate"]),
              d["false_positive_rate"] <= 0.05 if have(d["false_positive_rate"]) else None),
        check("EftCLIP ASR <= 0.10", num(e.get("asr")), e.get("asr") <= 0.10 if have(e.get("asr")) else None),
        check("EftCLIP CA >= poisoned CA - 0.03", f"{num(e.get('ca'))} (poisoned {num(p['ca'])})",
              e.get("ca") >= p["ca"] - 0.03 if have(e.get("ca"), p["ca"]) else None),
        check("the demo's stages take at most 15 minutes", f"{metrics.get('seconds', 0):.0f} s",
              metrics.get("seconds", 0) <= 900 if not metrics.get("quick") else None),
    ]


def goals_markdown(goals: list[dict]) -> list[str]:
    mark = {True: "met", False: "**missed**", None: "n/a"}
    return ["| goal | measured | |", "|---|---|---|",
            *[f"| {g['goal']} | {g['measured']} | {mark[g['met']]} |" for g in goals]]


def write_demo_report(out: Path, metrics: dict, *, before: dict, after: dict, detection: dict,
                      curated: dict) -> dict:
    """Write ``report.md``, ``tables/*`` (Markdown, CSV, JSON) and ``figures/*.png`` under ``out``."""
    out = Path(out)
    tables = out / "tables"
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    main = results_table(metrics, "Tables 2/3: CA and ASR on the world's zero-shot set "
                                  f"({metrics['attack']['name']} trigger, target '{metrics['target']}')")
    per_attack = attack_table([metrics])
    det = detection_table(metrics)
    prof = profile_table(metrics["detection"]["affected_labels"])
    for stem, table in (("results", main), ("attack", per_attack), ("detection", det), ("affected_labels", prof)):
        write_table(table, tables / stem)
    bars = {ROW_NAMES["clean"].split(" (")[0]: metrics["clean"], "Poisoned": metrics["poisoned"]}
    for name, d in metrics["defenses"].items():
        bars[{"eftclip": "EftCLIP", "cleanclip": "CleanCLIP", "cleanclip_large": "CleanCLIP (large)",
              "eftclip_repair": "EftCLIP + repair"}[name]] = d
    ca_asr_bars(bars, figures / "ca_asr.png")
    fig7 = Path(detection["dir"]) / "figure7.png"
    if fig7.exists():
        shutil.copyfile(fig7, figures / "figure7.png")

    shares = curated["manifest"].get("realised_shares") or curated["manifest"].get("shares") or {}
    lines = [
        "# eftclip demo report",
        "",
        f"Attack: **{metrics['attack']['name']}** {metrics['attack']['params']}, target **{metrics['target']}**, "
        f"seed {metrics['seed']}{' (quick variant: only the direction of each effect is meaningful)' if metrics.get('quick') else ''}.",
        f"Total time: {metrics['seconds']:.0f} s.",
        "",
        "ASR is the share of triggered zero-shot images whose true class is not the target that the model "
        "assigns to the target; CA is top-1 zero-shot accuracy on clean images.",
        "",
        main.markdown(),
        *verdict(metrics),
        "",
        "## Goals",
        "",
        *goals_markdown(goal_checks(metrics)),
        "",
        per_attack.markdown(),
        det.markdown(),
        prof.markdown(),
        f"Curated fine-tuning set: {metrics['defenses'].get('eftclip', {}).get('finetune_pairs')} pairs; "
        f"realised label shares: {shares}" if shares else "",
        "",
        "![CA and ASR](figures/ca_asr.png)",
        "",
        "![Figure 7: CLIP's list beside the oracle's boxes](figures/figure7.png)" if fig7.exists() else "",
        "",
        "## Stage times (s)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in metrics.get("stage_seconds", {}).items()],
        "",
    ]
    write_text(out / "report.md", "\n".join(lines))
    return {"report": str(out / "report.md"), "tables": str(tables), "figures": str(figures)}
