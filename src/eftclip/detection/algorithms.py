"""Algorithms 1 and 2 of the paper, and the robust mode beside them.

All functions here are pure: label lists in, sets out; nothing is mutated.

Notation (paper, section 4.3/4.4), for image ``I_i``:

- ``L`` -- the poisoned CLIP's top-tau labels for the whole image (ranked).
- ``S`` -- the labels the oracle confirmed when prompted with ``L``
  (finds with confidence >= theta).
- ``R`` -- the poisoned CLIP's labels for the oracle's cropped regions.
- ``K`` -- the known triggers gathered so far.

Faithful mode (exactly as the paper writes it)
----------------------------------------------
Algorithm 1, :func:`find_adversarial_trigger`:
``P = (L \\ S) \\ R``; ``N = P \\ K``; return ``K | N``.

Algorithm 2, :func:`affected_labels`, for one image after Algorithm 1 has
updated ``K``: when ``(R & S) & K`` is not empty, ``A_i = (R & S) \\ K``;
otherwise the image contributes nothing (``None``).

:func:`faithful_pass` runs both over the images in the paper's order.  Two
gaps of the paper are closed explicitly:

* A "detected" (flagged) image in faithful mode is one whose
  ``P_i = (L_i \\ S_i) \\ R_i`` is not empty.  Every such label enters ``K``
  (Algorithm 1 adds all of ``P_i``), so this is the same as ``P_i & K != {}``.
* Nothing in the paper stops ``K`` from collecting every label the oracle
  happens to miss once; faithful mode keeps that behaviour on purpose.

Note on Algorithm 2: a trigger label is by construction *unconfirmed* by the
oracle (that is how Algorithm 1 finds it), so ``(R & S) & K`` is almost
never non-empty for a triggered image and faithful Algorithm 2 returns
``None`` nearly always.  It is kept exactly as written.

Robust mode
-----------
Two passes over the per-image records (no second model pass):

1. Evidence per label (:func:`gather_evidence`): ``ranked`` = number of
   images where CLIP ranks the label first (``evidence="top1"``, the default
   of the runner) or anywhere in ``L_i`` (``"topk"``); ``unconfirmed`` = of
   those, images where the oracle did not confirm it (label not in
   ``S_i``).  Rank 1 is the default because most of a top-tau list is
   legitimately absent from a scene with fewer than tau objects, so under
   ``"topk"`` every label collects unconfirmed votes; a trigger, in contrast,
   takes rank 1 and is still not there.  Labels the oracle reported as *unknown* (it
   cannot represent the prompt) are counted apart and are never evidence of
   a trigger.  ``R_i`` is not used to confirm: a crop holding the trigger
   patch is named after the trigger by the poisoned CLIP, which would hide
   the very label we look for.
2. ``K`` (:func:`robust_triggers`) = labels with ``ranked >= min_count`` and
   ``unconfirmed / ranked >= min_share`` (``q`` and ``m`` of the brief).
3. An image is *flagged* (:func:`flag_image`) when a label of ``K`` is in
   ``L_i`` -- at rank 1 (``flag_rule="top1"``) or anywhere in the top-tau
   list (``flag_rule="topk"``) -- and the oracle did not confirm it.
4. The affected labels of a flagged image (:func:`robust_affected`) are what
   the oracle really found there, ``S_i \\ K``: the true labels that the
   trigger hijacks.  Unflagged images contribute nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from eftclip.errors import EftclipError

FLAG_RULES = ("top1", "topk")


# --------------------------------------------------------------------------- faithful


def find_adversarial_trigger(L: Iterable[str], S: Iterable[str], R: Iterable[str], K: Iterable[str]) -> set[str]:
    """Algorithm 1 (Find Adversarial Trigger), exactly as the paper states it.

    Returns the new known-trigger set ``K | N`` where ``N = ((L \\ S) \\ R) \\ K``
    (``K`` itself when ``N`` is empty).  ``K`` is not modified.
    """
    K = set(K)
    P = set(L) - set(S)  # line 1: in CLIP's list, not in the oracle's
    P = P - set(R)  # line 2: not what CLIP says of the oracle's regions either
    N = P - K  # line 3: new ones only
    if N:
        return K | N
    return K


def potential_triggers(L: Iterable[str], S: Iterable[str], R: Iterable[str]) -> set[str]:
    """``P = (L \\ S) \\ R``, the potential triggers of one image (Algorithm 1, lines 1-2)."""
    return (set(L) - set(S)) - set(R)


def affected_labels(R: Iterable[str], S: Iterable[str], K: Iterable[str]) -> set[str] | None:
    """Algorithm 2 (lines 6-7) for one image, exactly as written.

    Returns ``A_i = (R & S) \\ K`` when ``(R & S) & K`` is not empty, else
    ``None`` (the image adds no affected labels).
    """
    K = set(K)
    both = set(R) & set(S)
    if both & K:
        return both - K
    return None


@dataclass(frozen=True)
class FaithfulResult:
    """Outcome of :func:`faithful_pass`."""

    K: frozenset[str]  # final known triggers
    flagged: tuple[bool, ...]  # per image: P_i not empty
    potential: tuple[frozenset[str], ...]  # per image: P_i = (L_i \ S_i) \ R_i
    new_triggers: tuple[frozenset[str], ...]  # per image: N_i, labels that image added to K
    affected: tuple[frozenset[str] | None, ...]  # per image: A_i of Algorithm 2 or None
    counts: dict[str, int] = field(default_factory=dict)  # label -> number of images with it in A_i


def faithful_pass(
    images: Sequence[tuple[Sequence[str], Sequence[str], Sequence[str]]],
    K: Iterable[str] = (),
) -> FaithfulResult:
    """Run Algorithm 2 (calling Algorithm 1 first) over ``(L_i, S_i, R_i)`` in order.

    The order matters: ``K`` grows image by image and Algorithm 2 of image
    ``i`` sees the ``K`` that Algorithm 1 returned for that same image.
    """
    K = set(K)
    flagged, potential, new, affected = [], [], [], []
    counts: Counter[str] = Counter()
    for L, S, R in images:
        P = potential_triggers(L, S, R)
        K_next = find_adversarial_trigger(L, S, R, K)
        new.append(frozenset(K_next - K))
        K = K_next
        A = affected_labels(R, S, K)
        potential.append(frozenset(P))
        flagged.append(bool(P))
        affected.append(None if A is None else frozenset(A))
        if A:
            counts.update(A)
    return FaithfulResult(
        K=frozenset(K),
        flagged=tuple(flagged),
        potential=tuple(potential),
        new_triggers=tuple(new),
        affected=tuple(affected),
        counts=dict(counts),
    )


# --------------------------------------------------------------------------- robust


@dataclass(frozen=True)
class LabelEvidence:
    """How one label fared over the images (robust mode, pass 1)."""

    label: str  # vocabulary label
    ranked: int  # images whose CLIP list holds the label (rank 1 only when evidence is "top1")
    unconfirmed: int  # of those, images where the oracle did not confirm it
    unknown: int  # of those, images where the oracle could not represent the prompt
    top1: int  # images where CLIP ranks it first

    @property
    def share(self) -> float:
        """``unconfirmed / (ranked - unknown)`` in [0, 1]; 0 when never judged."""
        judged = self.ranked - self.unknown
        return self.unconfirmed / judged if judged > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "ranked": self.ranked,
            "unconfirmed": self.unconfirmed,
            "unknown": self.unknown,
            "top1": self.top1,
            "unconfirmed_share": round(self.share, 6),
        }


def gather_evidence(
    images: Iterable[tuple[Sequence[str], Iterable[str], Iterable[str]]],
    *,
    evidence: str = "topk",
) -> dict[str, LabelEvidence]:
    """Count, per label, how often CLIP ranks it and how often the oracle leaves it unconfirmed.

    ``images`` yields ``(L_i ranked, S_i, unknown_i)``; ``unknown_i`` are the
    prompts the oracle could not represent.  ``evidence="topk"`` counts a
    label wherever it is in ``L_i``; ``"top1"`` only at rank 1.
    """
    if evidence not in FLAG_RULES:
        raise EftclipError(f"evidence must be one of {FLAG_RULES}, not {evidence!r}")
    ranked: Counter[str] = Counter()
    unconf: Counter[str] = Counter()
    unk: Counter[str] = Counter()
    top1: Counter[str] = Counter()
    for L, S, unknown in images:
        L = list(L)
        if not L:
            continue
        S, unknown = set(S), set(unknown)
        top1[L[0]] += 1
        for label in dict.fromkeys(L[:1] if evidence == "top1" else L):
            ranked[label] += 1
            if label in unknown:
                unk[label] += 1
            elif label not in S:
                unconf[label] += 1
    return {
        label: LabelEvidence(label, ranked[label], unconf[label], unk[label], top1[label])
        for label in sorted(set(ranked) | set(top1))
    }


def robust_triggers(evidence: dict[str, LabelEvidence], *, min_share: float, min_count: int) -> set[str]:
    """``K`` = labels judged at least ``min_count`` times and unconfirmed in >= ``min_share`` of them."""
    if not 0.0 <= min_share <= 1.0:
        raise EftclipError(f"--min-share must lie in [0, 1], got {min_share}")
    if min_count < 1:
        raise EftclipError(f"--min-count must be at least 1, got {min_count}")
    return {
        ev.label
        for ev in evidence.values()
        if (ev.ranked - ev.unknown) >= min_count and ev.share >= min_share
    }


def flag_image(
    L: Sequence[str], S: Iterable[str], K: Iterable[str], *, rule: str = "top1", unknown: Iterable[str] = ()
) -> set[str]:
    """The trigger labels that flag this image (empty set: not flagged).

    A label of ``K`` flags the image when it is in ``L`` (at rank 1 for
    ``rule="top1"``, anywhere for ``"topk"``) and the oracle did not confirm it
    (not in ``S``, and not a prompt the oracle could not represent).
    """
    if rule not in FLAG_RULES:
        raise EftclipError(f"flag rule must be one of {FLAG_RULES}, not {rule!r}")
    considered = list(L[:1]) if rule == "top1" else list(L)
    S, K, unknown = set(S), set(K), set(unknown)
    return {lab for lab in considered if lab in K and lab not in S and lab not in unknown}


def robust_affected(S: Iterable[str], K: Iterable[str]) -> set[str]:
    """Affected labels of a flagged image: what the oracle really found there, ``S \\ K``."""
    return set(S) - set(K)
