"""An experiment's numbers, gathered from its stages' results: one record per cell, the summary.

Paths are left out (the stage folders hold them); figures are numbers and names only, so
``metrics.json`` is the same on every machine that computes the same numbers.
"""

from __future__ import annotations

from typing import Any

from eftclip.io import read_json
from eftclip.pipeline import steps
from eftclip.pipeline.plan import Plan


def stage_seconds(plan: Plan, node_id: str) -> float:
    """Compute seconds a stage took when it was made (0 when it is not finished)."""
    marker = plan.folder(node_id) / "stage.json"
    return float(read_json(marker).get("seconds", 0.0)) if marker.exists() else 0.0


def cell_metrics(cfg: Any, plan: Plan, cell: Any, results: dict) -> dict:
    """One cell's record: the attack, CA/ASR of every model, detection, each defense's pairs and time."""
    ids = cell.ids
    evals = {k.split(":", 1)[1]: results[v] for k, v in ids.items() if k.startswith("eval:")}
    detection = results[ids["detect"]]
    defenses = {}
    for key, node_id in ids.items():
        if key.startswith("defense:"):
            name = key.split(":", 1)[1]
            defenses[name] = {**steps.summary(evals[name]), "finetune_pairs": results[node_id].get("pairs"),
                              "seconds": stage_seconds(plan, node_id)}
    rate = cfg.poison_rate if cell.attack.poison_rate is None else cell.attack.poison_rate
    look = next((results[nid] for nid in _cell_stage_ids(plan, cell) if plan.nodes[nid].kind == "second_look"), None)
    return {
        "cell": cell.name,
        "attack": {"name": cell.attack.name, "params": results[ids["trigger"]]["params"]},
        "target": cell.target,
        "seed": cell.seed,
        "poison_rate": rate,
        "poisoned_pairs": results[ids["poison"]].get("poisoned"),
        "clean": steps.summary(evals["clean"]),
        "poisoned": steps.summary(evals["poisoned"]),
        "detection": {**steps.detection_summary(detection, cell.target),
                      **({"second_look_profile": look["profile"], "profile_vs_truth": look["profile_vs_truth"],
                          "second_look": look["summary"]} if look else {})},
        "defenses": defenses,
        "trigger_recovery": _recovery(results, ids),
        "stage_seconds": {node_id: stage_seconds(plan, node_id) for node_id in _cell_stage_ids(plan, cell)},
    }


def _recovery(results: dict, ids: dict) -> dict | None:
    if "recover" not in ids:
        return None
    summary = results[ids["recover"]]["summary"]
    keep = ("method", "mask_pixels", "mask_area", "recovered_asr", "n_flagged", "n_clean", "reason")
    return {**{k: summary.get(k) for k in keep}, "iou_with_true_trigger": results[ids["trigger_iou"]]["iou"]}


def _cell_stage_ids(plan: Plan, cell: Any) -> list[str]:
    shared = {cell.ids[k] for k in ("data", "clean", "oracle")}
    return [nid for nid in plan.nodes if nid.startswith(cell.prefix + "/") or nid in shared]


def collect(cfg: Any, plan: Plan, cells: list, results: dict, *, machine: dict, command: str | None,
            wall_seconds: float | None) -> dict:
    """The experiment's ``metrics.json``: every cell, the matrix summary, the goals, times, machine.

    ``wall_seconds`` is None when some stages were found finished in a shared cache (no wall time
    of the whole run exists then, and the time goal is not judged)."""
    from eftclip.pipeline.goals import cell_goals, matrix_goals
    from eftclip.pipeline.sources import build_source, source_mapping
    from eftclip.pipeline.statistics import summarise

    records = [cell_metrics(cfg, plan, cell, results) for cell in cells]
    compute = sum(stage_seconds(plan, nid) for nid in plan.nodes)
    timing = {"wall_seconds": wall_seconds, "compute_seconds": compute}
    for record in records:
        record["goals"] = cell_goals(record, cfg, wall_seconds=wall_seconds if len(records) == 1 else None)
    summary = summarise(records)
    return {
        "name": cfg.name,
        "command": command,
        "machine": machine,
        "source": source_mapping(build_source(cfg.source)),
        "quick": cfg.quick,
        "cells": records,
        "summary": summary,
        "goals": matrix_goals(summary, cfg.goals),
        **timing,
    }
