"""The one report writer of every experiment (demo and study): paper-shaped tables per cell,
the matrix statistics with their paired comparisons in words, the goals, figures."""

from __future__ import annotations

import shutil
from pathlib import Path

from eftclip.io import write_text
from eftclip.reporting.plots import ca_asr_bars
from eftclip.reporting.tables import Table, format_fraction, write_table

ROW_NAMES = {
    "clean": "Original CLIP (clean pre-training)",
    "poisoned": "Poisoned CLIP",
    "cleanclip": "CleanCLIP (random subset, same size)",
    "cleanclip_large": "CleanCLIP (random subset, larger)",
    "eftclip": "EftCLIP (ours: second look, unlearning pairs, recovered trigger stamped)",
    "eftclip_unlearn": "EftCLIP, unlearning pairs only",
    "eftclip_anchor": "EftCLIP, unlearning pairs + clean-feature anchor",
    "eftclip_paper": "EftCLIP as in the paper (curated set)",
    "eftclip_repair": "EftCLIP + repair pairs (flagged images, oracle captions)",
    "roclip": "RoCLIP (pre-training defense)",
}


def row_name(name: str) -> str:
    return ROW_NAMES.get(name, name)


def results_table(metrics: dict, title: str) -> Table:
    """Tables 2/3 of the paper: CA and ASR per model, with fine-tuning pairs and seconds."""
    table = Table(title=title, columns=["Model", "CA", "ASR", "fine-tuning pairs", "seconds"],
                  percent=["CA", "ASR"])
    table.add(Model=ROW_NAMES["clean"], CA=metrics["clean"]["ca"], ASR=metrics["clean"]["asr"])
    table.add(Model=ROW_NAMES["poisoned"], CA=metrics["poisoned"]["ca"], ASR=metrics["poisoned"]["asr"])
    for name, d in metrics["defenses"].items():
        table.add(Model=row_name(name), CA=d["ca"], ASR=d["asr"], **{
            "fine-tuning pairs": d["finetune_pairs"], "seconds": d["seconds"]})
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
    """Plain sentences comparing the defense under test with CleanCLIP at the same size, whatever they show."""
    from eftclip.pipeline.goals import under_test

    lines = []
    name = under_test(metrics["defenses"])
    e, c = metrics["defenses"].get(name) if name else None, metrics["defenses"].get("cleanclip")
    p = metrics["poisoned"]
    if e and c and e["asr"] is not None and c["asr"] is not None:
        if e["asr"] < c["asr"]:
            lines.append(f"At the same fine-tuning size ({e['finetune_pairs']} pairs), {name} left a "
                         f"lower ASR ({format_fraction(e['asr'])}) than CleanCLIP's random subset "
                         f"({format_fraction(c['asr'])}).")
        else:
            lines.append(f"At the same fine-tuning size ({e['finetune_pairs']} pairs), {name} did NOT beat "
                         f"CleanCLIP: ASR {format_fraction(e['asr'])} against {format_fraction(c['asr'])}.")
        if p["asr"] and min(e["asr"], c["asr"]) > 0.5 * p["asr"]:
            lines.append("Neither fine-tune removed most of the backdoor.")
    if e and p["ca"] is not None and e["ca"] is not None:
        lines.append(f"{name}'s CA moved by {100 * (e['ca'] - p['ca']):+.1f} points from the poisoned model's.")
    r = metrics["defenses"].get("eftclip_repair")
    if r and r["asr"] is not None and r["ca"] is not None:
        lines.append(f"With repair pairs (flagged, triggered detection images captioned with the oracle's labels; "
                     f"our extension) the ASR is {format_fraction(r['asr'])} at CA {format_fraction(r['ca'])}: "
                     "these pairs do show the trigger beside the right caption.")
    return lines


def goals_markdown(goals: list[dict]) -> list[str]:
    mark = {True: "met", False: "**missed**", None: "n/a"}
    return ["| goal | measured | |", "|---|---|---|",
            *[f"| {g['goal']} | {g['measured']} | {mark[g['met']]} |" for g in goals], ""]


def _stat(s: dict) -> str:
    if s.get("mean") is None:
        return "n/a"
    ci = s.get("ci95")
    text = f"{100 * s['mean']:.1f}"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def summary_tables(summary: dict) -> tuple[Table, Table]:
    """Mean and 95% interval (percent) per model and attack; paired differences per comparison."""
    stats = Table(title="CA and ASR per attack: mean over cells [95% interval], percent",
                  columns=["model", "attack", "n", "pairs", "CA", "ASR"])
    for attack, p in summary["poisoned"].items():
        stats.add(model="poisoned", attack=attack, n=p["ca"]["n"], pairs="", CA=_stat(p["ca"]), ASR=_stat(p["asr"]))
    for name, per_attack in summary["defenses"].items():
        for attack, s in per_attack.items():
            stats.add(model=name, attack=attack, n=s["ca"]["n"], pairs=s["pairs"], CA=_stat(s["ca"]),
                      ASR=_stat(s["asr"]))
    paired = Table(title="Paired differences (defense - baseline, same cells): mean [95% interval], points",
                   columns=["comparison", "attack", "n", "CA diff", "ASR diff", "ASR resolved"])
    from eftclip.pipeline.statistics import resolved

    for pair, per_attack in summary["paired"].items():
        for attack, s in per_attack.items():
            r = resolved(s["asr"])
            paired.add(comparison=pair, attack=attack, n=s["asr"]["n"], **{
                "CA diff": _stat(s["ca"]), "ASR diff": _stat(s["asr"]),
                "ASR resolved": "n/a" if r is None else ("yes" if r else "no")})
    return stats, paired


def write_cell_report(folder: Path, m: dict, *, detection_dir: str | None, curated: dict | None) -> list[str]:
    """One cell's tables and figures under ``folder``; returns its Markdown section."""
    tables, figures = folder / "tables", folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    main = results_table(m, f"{m['cell']}: CA and ASR ({m['attack']['name']} trigger, target '{m['target']}', "
                            f"seed {m['seed']}, {m['poisoned_pairs']} poisoned pairs)")
    det = detection_table(m)
    prof = profile_table(m["detection"]["affected_labels"])
    prof.title = "Affected-label profile, the paper's rule (S_i from CLIP's top-tau list)"
    look = m["detection"].get("second_look_profile")
    look_table = profile_table(look) if look else None
    if look_table is not None:
        look_table.title = "Affected-label profile, second look (the whole vocabulary asked, minus K)"
        write_table(look_table, tables / "affected_labels_second_look")
    truth = m["detection"].get("profile_vs_truth") or {}
    truth_lines = ["Profile against the truth of the flagged triggered images (scoring only): " + "; ".join(
        f"{rule}: distance {b['tv_distance']:.3f}, object recall {b['object_recall']:.2f}"
        for rule, b in truth.items() if b.get("tv_distance") is not None), ""] if truth else []
    rec = m.get("trigger_recovery") or {}
    rec_lines = [f"Trigger recovery ({rec.get('method')}): {rec.get('mask_pixels')} mask pixels, pulls "
                 f"{rec.get('recovered_asr')} of clean pool images to K; IoU with the true trigger "
                 f"{rec.get('iou_with_true_trigger')} (scoring only).", ""] if rec else []
    for stem, table in (("results", main), ("detection", det), ("affected_labels", prof)):
        write_table(table, tables / stem)
    ca_asr_bars({"Clean": m["clean"], "Poisoned": m["poisoned"], **m["defenses"]}, figures / "ca_asr.png",
                title=f"{m['cell']}: CA and ASR")
    fig7 = Path(detection_dir) / "figure7.png" if detection_dir else None
    if fig7 is not None and fig7.exists():
        shutil.copyfile(fig7, figures / "figure7.png")
    shares = (curated or {}).get("manifest", {}).get("realised_shares") or {}
    section = [f"## {m['cell']}", "", f"Attack **{m['attack']['name']}** {m['attack']['params']}, target "
            f"**{m['target']}**, seed {m['seed']}.", "", main.markdown(), *verdict(m), "",
            "### Goals", "", *goals_markdown(m["goals"]), det.markdown(), prof.markdown(),
            look_table.markdown() if look_table is not None else "", *truth_lines, *rec_lines,
            f"Paper-curated set's realised label shares: {shares}" if shares else "", "",
            f"![CA and ASR](cells/{folder.name}/figures/ca_asr.png)", ""]
    from eftclip.io import write_json

    write_json(folder / "metrics.json", m)
    write_text(folder / "report.md", "\n".join(section).replace(f"](cells/{folder.name}/", "]("))
    return section


def write_experiment_report(out: Path, metrics: dict, *, plan, cells, results) -> dict:
    """``report.md``, ``summary.json``, ``tables/*`` (Markdown, CSV, JSON), ``figures/*`` and one
    folder per cell under ``cells/``."""
    from eftclip.io import write_json
    from eftclip.pipeline.statistics import sentences
    from eftclip.reporting.plots import matrix_bars

    out = Path(out)
    write_json(out / "summary.json", metrics["summary"])
    stats, paired = summary_tables(metrics["summary"])
    write_table(stats, out / "tables" / "summary")
    write_table(paired, out / "tables" / "paired")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    s = metrics["summary"]
    matrix_bars({"poisoned": s["poisoned"], **s["defenses"]}, out / "figures" / "matrix.png")
    sections = []
    for m, cell in zip(metrics["cells"], cells):
        detection = results[cell.ids["detect"]]
        curated = results.get(cell.ids.get("set:eftclip_paper", ""))
        sections += write_cell_report(out / "cells" / m["cell"], m, detection_dir=detection.get("dir"),
                                      curated=curated)
    lines = [f"# {metrics['name']}", "", *_head(metrics), "## Matrix: means over cells, 95% intervals", "",
             stats.markdown(), paired.markdown(), *[f"- {x}" for x in sentences(s)], "",
             "![matrix](figures/matrix.png)", "", "## Repair goals (eftclip, over the matrix)", "",
             *goals_markdown(metrics["goals"]), *sections]
    write_text(out / "report.md", "\n".join(lines))
    return {"report": "report.md"}


def _head(metrics: dict) -> list[str]:
    mach = metrics.get("machine") or {}
    wall = metrics.get("wall_seconds")
    wall_text = ("Wall time: not measured (stages were found finished in a shared cache)" if wall is None
                 else f"Wall time of the run {wall:.0f} s")
    quick = " Quick preset: only the direction of each effect is meaningful." if metrics.get("quick") else ""
    return [f"Command: `{metrics.get('command') or '(Python API)'}`", "",
            f"Machine: {mach.get('cpu')} (flags {', '.join(mach.get('cpu_flags') or []) or 'none'}), "
            f"{mach.get('nproc')} usable cores, {mach.get('memory_gib')} GiB, load average at start "
            f"{mach.get('load_average')}, GPU {mach.get('gpu') or 'none'}; torch {mach.get('torch')}.", "",
            f"{wall_text}; compute time of all stages {metrics['compute_seconds']:.0f} s.{quick}",
            "", "CA: top-1 zero-shot accuracy on clean images. ASR: share of triggered images whose true class is "
            "not the target that the model assigns to the target.", ""]
