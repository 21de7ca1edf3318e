"""The verdict, ``metrics.json``, ``report.md`` and the copied outputs of ``eftclip defend``.

Everything here is read from the stages' results; nothing is computed that a rerun would
have to redo.  Scoring against a true trigger (``--true-attack``) is kept in its own block,
labelled as such: the defense never used it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from eftclip.io import atomic_path, portable_paths, read_json, write_json, write_text


def target_of(detection: dict) -> str | None:
    """K's top label (most images left unconfirmed), or None when K is empty."""
    K = list(detection["metrics"].get("K") or [])
    if not K:
        return None
    evidence = read_json(Path(detection["dir"]) / "triggers.json").get("evidence", {})
    return max(K, key=lambda lab: (evidence.get(lab, {}).get("unconfirmed", 0), lab))


def closest_labels(detection: dict, n: int = 3) -> list[dict]:
    """The labels that came closest to K: highest unconfirmed share among those CLIP ranked first."""
    evidence = read_json(Path(detection["dir"]) / "triggers.json").get("all_evidence", {})
    judged = [{"label": lab, "judged": e["ranked"] - e["unknown"], "unconfirmed": e["unconfirmed"],
               "share": e["unconfirmed_share"]} for lab, e in evidence.items() if e["ranked"] - e["unknown"] > 0]
    return sorted(judged, key=lambda e: (-e["share"], -e["judged"], e["label"]))[:n]


def verdict(detection: dict, target: str | None, recovery: dict | None = None) -> str:
    m = detection["metrics"]
    if target:
        found = f"backdoor found: target '{target}', {m['n_flagged']} of {m['n_images']} images flagged, "
        if (recovery or {}).get("mask_pixels", 0) == 0:
            found += "no trigger recovered (the recovered mask is empty; saved anyway in trigger/ of the output folder)"
        else:
            # relative to the output folder: the verdict is written into files that may be moved or committed
            found += "trigger recovered (mask and pattern saved as PNG: trigger/mask.png, trigger/pattern.png)"
        warned = len(m.get("warnings") or [])
        return found + (f"; detection gave {warned} warning(s) about this verdict (see report.md)"
                        if warned else "")
    params = m.get("params", {})
    near = "; ".join(f"'{e['label']}' unconfirmed in {e['unconfirmed']} of {e['judged']} images ({e['share']:.2f})"
                     for e in closest_labels(detection)) or "no label was judged"
    return (f"no backdoor found: K is empty ({m['n_flagged']} of {m['n_images']} images flagged); no label was "
            f"left unconfirmed by the oracle in >= {params.get('min_share')} of >= {params.get('min_count')} images "
            f"where CLIP ranked it first; closest: {near}")


def _place(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (a copy across file systems), atomically; already there: nothing."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # (a rename onto another link of the same file would do nothing and leave the temporary)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


def _side_file(src: Path, dst: Path) -> None:
    """The checkpoint's JSON side file beside its new name: ``weights`` names the placed file, and the
    training run's paths (stage folders, possibly in a shared cache) are written relative to ``dst``'s folder."""
    side = read_json(src)
    side["weights"] = dst.with_suffix(".safetensors").name
    write_json(dst, portable_paths(side, dst.parent))


def _outputs(out: Path, results: dict, ids: dict) -> dict:
    """The trigger PNGs and the repaired checkpoint, placed in ``out``."""
    rec = Path(results[ids["recover"]]["dir"])
    for name in ("mask.png", "pattern.png", "trigger.json"):
        _place(rec / name, out / "trigger" / name)
    final = Path(results[ids["repair"]]["checkpoint"])
    _place(final, out / "repaired.safetensors")
    _side_file(final.with_suffix(".json"), out / "repaired.json")
    return {"trigger_dir": "trigger", "mask": "trigger/mask.png", "pattern": "trigger/pattern.png",
            "repaired_checkpoint": "repaired.safetensors"}


def _evaluation(results: dict, ids: dict, trigger: str) -> dict | None:
    keys = {"before": f"eval:suspect:{trigger}", "after": f"eval:repair:{trigger}"}
    if not all(k in ids for k in keys.values()):
        return None
    return {when: {"ca": results[ids[k]]["ca_top1"], "ca_top5": results[ids[k]]["ca_top5"],
                   "asr": results[ids[k]]["asr"], "n": results[ids[k]]["n"]} for when, k in keys.items()}


def collect(r, results: dict, ids: dict, target: str | None) -> dict:
    """``metrics.json``: the verdict, detection, recovery, repair, evaluation and (apart) scoring."""
    out = Path(r.cfg.out)
    det = results["detect"]
    m = det["metrics"]
    rec = results[ids["recover"]]["summary"] if target else None
    metrics = {"verdict": verdict(det, target, rec), "backdoor_found": bool(target), "target": target,
               "detection": {"K": m.get("K"), "n_flagged": m.get("n_flagged"), "n_images": m.get("n_images"),
                             "n_skipped": m.get("n_skipped"), "affected_labels": det.get("profile"),
                             "closest_labels": None if target else closest_labels(det),
                             "warnings": m.get("warnings", [])}}
    if not target:
        return metrics
    look = results[ids["look"]]
    cur = results[ids["curate"]]["manifest"]
    metrics["second_look"] = {"profile": look["profile"], **look["summary"]}
    metrics["trigger"] = {k: rec.get(k) for k in ("method", "mask_pixels", "mask_area", "recovered_asr")}
    metrics["repair"] = {"pairs": cur.get("size", r.cfg.size), "unlearn_pairs": cur.get("unlearn_pairs"),
                         "pool_pairs": cur.get("pool_pairs"), "epochs": results[ids["repair"]]["summary"].get("epochs"),
                         "seconds": results[ids["repair"]].get("seconds")}
    metrics["outputs"] = _outputs(out, results, ids)
    metrics["evaluation"] = _evaluation(results, ids, "recovered")
    true = _evaluation(results, ids, "true")
    if true is not None:
        metrics["scoring_not_used_by_the_defense"] = {
            "true_attack": r.cfg.true_attack, "true_attack_params": r.cfg.true_attack_params,
            "under_true_trigger": true, "mask_iou": results[ids["iou"]]["iou"]}
    return metrics


def finish(r, plan, results: dict, ids: dict, target: str | None, *, stream=None) -> dict:
    from eftclip.config import write_config
    from eftclip.pipeline.defend_checks import relative_config
    from eftclip.pipeline.defend_markdown import report_markdown

    out = Path(r.cfg.out)
    metrics = collect(r, results, ids, target)
    metrics["stage_seconds"] = {nid: read_json(plan.folder(nid) / "stage.json")["seconds"] for nid in plan.nodes}
    write_config(out / "config.yaml", relative_config(r.cfg, out, oracle_args=r.oracle_args))
    write_json(out / "metrics.json", metrics)
    write_text(out / "verdict.txt", metrics["verdict"] + "\n")
    write_text(out / "report.md", report_markdown(metrics))
    print(metrics["verdict"], file=stream or sys.stderr, flush=True)
    return metrics
