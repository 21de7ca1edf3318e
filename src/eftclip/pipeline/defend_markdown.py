"""``report.md`` of ``eftclip defend``, written from its ``metrics.json`` alone."""

from __future__ import annotations


def _rate(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(block: dict, title: str) -> list[str]:
    before, after = block["before"], block["after"]
    return [f"### {title}", "", "| model | CA (top-1) | ASR |", "|---|---|---|",
            f"| suspect (before) | {_rate(before['ca'])} | {_rate(before['asr'])} |",
            f"| repaired (after) | {_rate(after['ca'])} | {_rate(after['asr'])} |", ""]


def report_markdown(metrics: dict) -> str:
    det = metrics["detection"]
    lines = ["# eftclip defend", "", f"**{metrics['verdict']}**", "", "## Detection", "",
             f"K = {det['K']}; {det['n_flagged']} of {det['n_images']} images flagged"
             + (f" ({det['n_skipped']} unreadable, skipped)" if det.get("n_skipped") else "") + ".", ""]
    lines += [f"- warning: {w}" for w in det.get("warnings") or []] + ([""] if det.get("warnings") else [])
    if not metrics["backdoor_found"]:
        lines += ["Labels that came closest to K (share of the images where CLIP ranked them first that the "
                  "oracle left unconfirmed):", "", "| label | judged | unconfirmed | share |", "|---|---|---|---|"]
        lines += [f"| {e['label']} | {e['judged']} | {e['unconfirmed']} | {e['share']:.2f} |"
                  for e in det["closest_labels"]]
        lines += ["", "Nothing was repaired.", ""]
        return "\n".join(lines)
    profile = metrics["second_look"]["profile"]
    trig, rep = metrics["trigger"], metrics["repair"]
    lines += ["## Second look: the objects the trigger hijacked", "",
              ", ".join(f"{lab} ({n})" for lab, n in list(profile.items())[:12]) or "(none found)", "",
              "## Recovered trigger", "", "| mask | pattern |", "|---|---|",
              "| ![mask](trigger/mask.png) | ![pattern](trigger/pattern.png) |", "",
              f"Method {trig['method']}; {trig['mask_pixels']} mask pixels; the recovered trigger sends "
              f"{_rate(trig['recovered_asr'])} of clean pool images to K.", "",
              "## Repair", "",
              f"{rep['pairs']} pairs ({rep['unlearn_pairs']} unlearning pairs: flagged images captioned with what "
              f"the oracle found there), the eftclip recipe, {rep['epochs']} epochs -> "
              f"`{metrics['outputs']['repaired_checkpoint']}`.", ""]
    if metrics.get("evaluation"):
        lines += ["## Before and after", "", f"ASR: share of triggered non-target images classified "
                  f"'{metrics['target']}' (K's top label).", ""]
        lines += _table(metrics["evaluation"], "Under the recovered trigger")
    score = metrics.get("scoring_not_used_by_the_defense")
    if score:
        lines += ["## Scoring the defense did not use", "",
                  f"The true trigger ({score['true_attack']} {score['true_attack_params']}) was named for "
                  "scoring; no stage of the defense read it.", "",
                  f"Recovered mask IoU with the true mask: {score['mask_iou']:.3f}", ""]
        lines += _table(score["under_true_trigger"], "Under the true trigger")
    return "\n".join(lines)
