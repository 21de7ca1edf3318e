"""Pass 2 of detection, pure: from stored pass-1 records to K, flags, affected labels and metrics.

For the chosen ``tau`` and ``theta``: ``L_i`` = top-``tau`` labels, ``S_i`` =
labels of ``L_i`` with a find scoring ``>= theta``, ``R_i`` = crop labels of
those finds.  Both modes of :mod:`eftclip.detection.algorithms` are computed,
faithful (Algorithms 2 then 1 per image, in dataset order) and robust
(evidence, ``K``, flags, affected labels); the chosen ``mode`` (and
``flag_rule``) decides the headline, the others are reported beside it.
No model and no file: :func:`decide` reads records from a callable and hands
decided records to ``write``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from eftclip.detection.algorithms import (
    FLAG_RULES,
    affected_labels,
    find_adversarial_trigger,
    flag_image,
    gather_evidence,
    potential_triggers,
    robust_affected,
    robust_triggers,
)
from eftclip.detection.config import DecideParams, check_params, decision_dict
from eftclip.detection.metrics import detection_metrics, profile_from_counts


def image_sets(rec: dict, tau: int, theta: float) -> tuple[list[str], list[str], list[str], list[str], list[dict]]:
    """``(L_i, S_i, R_i, unknown_i, kept finds)`` of a pass-1 record at ``tau`` and ``theta``.

    ``S_i`` holds the labels of ``L_i`` with a find scoring ``>= theta``; ``R_i``
    the crop labels of those finds (the paper crops only the regions kept at theta).
    """
    L = [c[0] for c in rec["clip"][:tau]]
    Lset = set(L)
    kept = [f for f in rec["finds"] if f["score"] >= theta and f["label"] in Lset]
    S = list(dict.fromkeys(f["label"] for f in kept))
    R = list(dict.fromkeys(f["crop"][0][0] for f in kept if f.get("crop")))
    unknown = [u for u in rec.get("unknown", []) if u in Lset]
    return L, S, R, unknown, kept


@dataclass(frozen=True)
class Judgement:
    """One image's sets and both modes' verdicts at the chosen tau and theta."""

    L: list[str]  # CLIP's top-tau labels, best first
    S: list[str]  # labels of L confirmed by the oracle at theta
    R: list[str]  # CLIP's labels for the crops of the confirmed finds
    U: list[str]  # labels of L the oracle cannot represent
    kept: list[dict]  # the finds scoring >= theta
    P: set[str]  # faithful: (L \ S) \ R
    new: set[str]  # faithful: labels this image added to K
    A_f: set[str] | None  # faithful: Algorithm 2's affected labels
    hits: dict[str, set[str]]  # robust: K's labels that flag the image, per flag rule
    A_r: set[str] | None  # robust: affected labels (S minus K) when flagged under the chosen rule


def judge(rec: dict, p: DecideParams, K_f: set[str], K_robust: set[str]) -> tuple[Judgement, set[str]]:
    """The image's :class:`Judgement`, and the faithful K grown by it (Algorithm 1 in dataset order)."""
    L, S, R, U, kept = image_sets(rec, p.tau, p.theta)
    K_next = find_adversarial_trigger(L, S, R, K_f)
    hits = {rule: flag_image(L, S, K_robust, rule=rule, unknown=U) for rule in FLAG_RULES}
    A_r = robust_affected(S, K_robust) if hits[p.flag_rule] else None
    return Judgement(L, S, R, U, kept, potential_triggers(L, S, R), K_next - K_f,
                     affected_labels(R, S, K_next), hits, A_r), K_next


def why_flagged(rec: dict, L: list[str], hits: set[str], theta: float) -> str:
    """A robust flag's explanation: which trigger of K, where in CLIP's list, what the oracle scored."""
    parts = []
    for lab in sorted(hits):
        best = max((f["score"] for f in rec["finds"] if f["label"] == lab), default=None)
        where = "top-1" if L and L[0] == lab else f"rank {L.index(lab) + 1}"
        conf = "the oracle found nothing for it" if best is None else f"the oracle's best score {best:.2f} < theta {theta}"
        parts.append(f"'{lab}' ({where} of CLIP's list) is a known trigger and {conf}")
    return "; ".join(parts)


def _faithful_verdict(rec: dict, j: Judgement, p: DecideParams) -> tuple[bool, set[str] | None, str]:
    why = (f"labels {sorted(j.P)} of CLIP's list were confirmed neither by the oracle (theta {p.theta}) "
           f"nor by CLIP on the oracle's crops" if j.P else "")
    return bool(j.P), j.A_f, why


def _robust_verdict(rec: dict, j: Judgement, p: DecideParams) -> tuple[bool, set[str] | None, str]:
    hits = j.hits[p.flag_rule]
    return bool(hits), j.A_r, why_flagged(rec, j.L, hits, p.theta) if hits else ""


@dataclass(frozen=True)
class ModeRule:
    """What a detection mode makes of the judgements."""

    verdict: Callable[[dict, Judgement, DecideParams], tuple[bool, set[str] | None, str]]  # (flagged, affected, why)
    headline: Callable[[DecideParams], str]  # the key of the flags (and metrics) the mode reports
    family: str  # "faithful" or "robust": whose K and affected-label profile the mode reports


MODE_RULES: dict[str, ModeRule] = {
    "faithful": ModeRule(_faithful_verdict, lambda p: "faithful", "faithful"),
    "robust": ModeRule(_robust_verdict, lambda p: f"robust_{p.flag_rule}", "robust"),
}


@dataclass
class Tally:
    """What stream 2 accumulates over the images, in dataset order."""

    truth: list[bool | None] = field(default_factory=list)  # is_poisoned per judged image
    flags: dict[str, list[bool]] = field(default_factory=lambda: {"faithful": [], "robust_top1": [], "robust_topk": []})
    aff_counts: dict[str, Counter] = field(default_factory=lambda: {"faithful": Counter(), "robust": Counter()})
    top1_poisoned: Counter = field(default_factory=Counter)  # CLIP's top-1 label on triggered images
    # how often the oracle confirms CLIP's top-1 label: a diagnostic of the oracle, not of the attack
    top1_confirmed: dict[str, list[int]] = field(default_factory=lambda: {"all": [0, 0], "clean": [0, 0]})
    n_errors: int = 0  # records of images that failed to load
    figure: list[dict] = field(default_factory=list)  # flagged images for figure7.png

    def add(self, rec: dict, j: Judgement) -> None:
        self.flags["faithful"].append(bool(j.P))
        self.flags["robust_top1"].append(bool(j.hits["top1"]))
        self.flags["robust_topk"].append(bool(j.hits["topk"]))
        self.truth.append(rec.get("is_poisoned"))
        if j.A_f:
            self.aff_counts["faithful"].update(j.A_f)
        if j.A_r:
            self.aff_counts["robust"].update(j.A_r)
        if rec.get("is_poisoned") and j.L:
            self.top1_poisoned[j.L[0]] += 1
        if j.L and j.L[0] not in j.U:
            hit = int(j.L[0] in j.S)
            for group in ("all",) + (("clean",) if rec.get("is_poisoned") is False else ()):
                self.top1_confirmed[group][0] += hit
                self.top1_confirmed[group][1] += 1

    def add_to_figure(self, rec: dict, j: Judgement, figure_n: int) -> None:
        if len(self.figure) < 4 * figure_n:
            self.figure.append({"image": rec["image"], "L": j.L, "S": j.kept, "is_poisoned": rec.get("is_poisoned"),
                                "key": rec["key"]})

    def confirm_rate(self, group: str) -> float | None:
        hit, n = self.top1_confirmed[group]
        return hit / n if n else None


def decided_record(rec: dict, j: Judgement, verdict: tuple[bool, set[str] | None, str], tally: Tally) -> dict:
    """The pass-1 record with the decision fields of ``images.jsonl`` added."""
    flagged, affected, why = verdict
    out = dict(rec)
    out.update(
        {
            "L": j.L,
            "S": [{"label": f["label"], "score": f["score"], "box": f["box"]} for f in j.kept],
            "R": j.R,
            "flagged": flagged,
            "why": why,
            "affected": None if affected is None else sorted(affected),
            "flags": {k: v[-1] for k, v in tally.flags.items()},
            "faithful": {"P": sorted(j.P), "new_triggers": sorted(j.new),
                         "A": None if j.A_f is None else sorted(j.A_f)},
        }
    )
    return out


def decide(records: Callable[[], Iterable[dict]], p: DecideParams, *, write: Callable[[dict], None] | None = None,
           figure_n: int = 0) -> dict:
    """Pass 2 over pass-1 records; returns K, flags summary, profiles and metrics for every mode.

    ``records`` is called twice (two streams over the same records, dataset
    order).  ``p`` is a DecideParams or a DetectConfig.  When ``write`` is
    given, every record is passed to it with the decision fields added (``L``,
    ``S``, ``R``, ``flagged``, ``why``, ``affected``, ``flags``, ``faithful``).
    """
    check_params(p)
    # stream 1: robust evidence
    evidence = gather_evidence(
        ((L, S, U) for L, S, _, U, _ in (image_sets(r, p.tau, p.theta) for r in records() if "error" not in r)),
        evidence=p.evidence,
    )
    K_robust = robust_triggers(evidence, min_share=p.min_share, min_count=p.min_count)
    # stream 2: faithful replay in order, robust flags, outputs
    K_f, tally = _replay(records(), p, K_robust, write, figure_n)
    return _result(p, evidence, K_f, K_robust, tally, figure_n)


def _replay(records: Iterable[dict], p: DecideParams, K_robust: set[str], write: Callable[[dict], None] | None,
            figure_n: int) -> tuple[set[str], Tally]:
    rule = MODE_RULES[p.mode]
    K_f: set[str] = set()
    tally = Tally()
    for rec in records:
        if "error" in rec:
            tally.n_errors += 1
            if write is not None:
                write(rec)
            continue
        j, K_f = judge(rec, p, K_f, K_robust)
        tally.add(rec, j)
        verdict = rule.verdict(rec, j, p)
        if write is not None:
            write(decided_record(rec, j, verdict, tally))
        if figure_n and verdict[0]:
            tally.add_to_figure(rec, j, figure_n)
    return K_f, tally


def _result(p: DecideParams, evidence: dict, K_f: set[str], K_robust: set[str], tally: Tally, figure_n: int) -> dict:
    rule = MODE_RULES[p.mode]
    target = None
    if p.target:
        from eftclip.detection.vocab import normalise_label

        target = normalise_label(p.target)
    metrics_by = {name: detection_metrics(f, tally.truth) for name, f in tally.flags.items()}
    chosen_name = rule.headline(p)
    K = {"faithful": K_f, "robust": K_robust}[rule.family]
    likely_target = tally.top1_poisoned.most_common(1)[0][0] if tally.top1_poisoned else None
    # poisoned first when the truth is known, then in dataset order
    figure = sorted(tally.figure, key=lambda e: (e["is_poisoned"] is not True,))[:figure_n] if tally.figure else []
    return {
        "params": decision_dict(p),
        "K": sorted(K),
        "K_faithful": sorted(K_f),
        "K_robust": sorted(K_robust),
        "evidence": evidence,
        "profile": profile_from_counts(tally.aff_counts[rule.family]),
        "profiles": {m: profile_from_counts(c) for m, c in tally.aff_counts.items()},
        "n_images": len(tally.truth),
        "n_errors": tally.n_errors,
        "n_flagged": sum(tally.flags[chosen_name]),
        "metrics": metrics_by[chosen_name],
        "metrics_by_mode": metrics_by,
        "chosen": chosen_name,
        "target": target,
        "target_in_K": None if target is None else target in K,
        "likely_target": likely_target,
        "likely_target_in_K": None if likely_target is None else likely_target in K,
        "oracle_top1_confirm_rate": tally.confirm_rate("all"),
        "oracle_top1_confirm_rate_clean": tally.confirm_rate("clean"),
        "figure": figure,
    }
