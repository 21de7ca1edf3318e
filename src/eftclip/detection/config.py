"""The settings of a detection run: :class:`DetectConfig` and its pass-2 part :class:`DecideParams`.

``DecideParams`` holds the settings that only pass 2 reads (no model is needed
to change them).  ``DetectConfig`` *is* a ``DecideParams`` (it inherits those
fields, declared once) plus the pass-1 and runtime settings, so the pure
:func:`eftclip.detection.decide.decide` takes either, and a ``DetectConfig`` is
still built with flat keywords (``DetectConfig(checkpoint=..., theta=0.5)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from eftclip.config import cli_flag
from eftclip.detection.algorithms import FLAG_RULES
from eftclip.errors import EftclipError

MODES = ("robust", "faithful")
ON_ERROR = ("skip", "fail")


@dataclass(frozen=True)
class DecideParams:
    """The pass-2 settings (no model needed to change them)."""

    tau: int = 5  # length of CLIP's label list L_i (and of the oracle's prompt)
    theta: float = 0.66  # oracle confidence threshold in [0, 1]
    mode: str = field(default="robust", metadata=cli_flag(choices=MODES))  # "robust" or "faithful" (the paper's rules as written)
    flag_rule: str = field(default="top1", metadata=cli_flag(choices=FLAG_RULES))  # robust: a trigger of K flags an image at rank 1 ("top1") or anywhere in L_i ("topk")
    evidence: str = field(default="top1", metadata=cli_flag(choices=FLAG_RULES))  # robust: count a label as ranked only at rank 1 ("top1") or wherever in L_i ("topk")
    min_share: float = 0.66  # robust: q, share of images where ranked that leave the label unconfirmed
    min_count: int = 5  # robust: m, least number of judged images for a label to enter K
    target: str | None = None  # the true attack target, when known (metrics: is it in K)


@dataclass(frozen=True, kw_only=True)
class DetectConfig(DecideParams):
    """Settings of one detection run (``eftclip detect``): the pass-2 fields of DecideParams, then these."""

    checkpoint: str  # the suspect (poisoned) CLIP: .safetensors with its JSON side file
    images: str  # a caption CSV/TSV/webdataset (key, image, caption, is_poisoned) or a folder of images
    out: str  # output folder
    vocab: str = "mined"  # a label file (.txt / .json), or "mined" (nouns of the captions)
    labels: tuple[str, ...] = ()  # labels always added to the vocabulary (e.g. the suspected target)
    vocab_size: int = 200  # "mined": at most this many labels
    vocab_min_count: int = 3  # "mined": a word must occur in at least this many captions
    oracle: str = "reference"  # oracle backend name (eftclip.oracles.ORACLES)
    oracle_args: dict = field(default_factory=dict, metadata=cli_flag("--oracle-arg"))  # keyword arguments for the oracle's constructor
    prompt_tau: int | None = None  # prompt the oracle with this many labels (>= tau) so tau sweeps need no model pass; None = tau
    templates: tuple[str, ...] = field(default=("a photo of a {}.",), metadata=cli_flag("--template"))  # prompt templates for CLIP's text classifier
    crop_pad: float = 0.0  # grow each oracle box by this fraction of its size before cropping
    batch_size: int = 32  # images per batch (CLIP, oracle, and crops re-scored)
    device: str = "cpu"  # torch device for CLIP
    device_crops: bool | None = None  # resize images and cut crops on --device (torchvision roi_align), not through PIL; unset: on CUDA only (crop probabilities differ slightly from the PIL path's; the tests bound it)
    on_error: str = field(default="skip", metadata=cli_flag(choices=ON_ERROR))  # an image that fails to load: "skip" (counted) or "fail"
    max_images: int | None = None  # only the first N images (quick looks)
    figure_n: int = 5  # images in figure7.png
    resume: bool = False  # keep the records of a run made with other pass-2 settings
    force: bool = False  # discard whatever run is in `out` and start over
    merge_timeout_s: float = 86400.0  # rank 0 waits this long for the other ranks to finish

    @property
    def list_length(self) -> int:
        """How many labels of CLIP's list pass 1 stores (``prompt_tau``, else ``tau``)."""
        return self.prompt_tau or self.tau


# the settings whose change makes the stored per-image records useless
PASS1_FIELDS = ("checkpoint", "images", "vocab", "labels", "vocab_size", "vocab_min_count", "oracle",
                "oracle_args", "prompt_tau", "templates", "crop_pad", "max_images")


def decision_dict(p: DecideParams) -> dict[str, Any]:
    """The pass-2 fields of ``p`` (a DecideParams or a DetectConfig), in declaration order."""
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(DecideParams)}


def run_settings(cfg: DetectConfig, vocab: list[str]) -> dict:
    """``{"pass1": {...}, "pass2": {...}}``: what ``run.json`` holds, compared when a folder is reused."""
    from eftclip.config import to_dict

    d = to_dict(cfg)
    d["prompt_tau"] = cfg.list_length
    pass1 = {k: d[k] for k in PASS1_FIELDS}
    pass1["resolved_vocab"] = vocab
    return {"pass1": pass1, "pass2": {k: d[k] for k in decision_dict(cfg)}}


def check_params(p: DecideParams, vocab_size: int | None = None, prompt_tau: int | None = None) -> None:
    """Raise EftclipError naming the flag for any out-of-range pass-2 setting."""
    if p.mode not in MODES:
        raise EftclipError(f"--mode must be one of {MODES}, not {p.mode!r}")
    if p.flag_rule not in FLAG_RULES:
        raise EftclipError(f"--flag-rule must be one of {FLAG_RULES}, not {p.flag_rule!r}")
    if p.evidence not in FLAG_RULES:
        raise EftclipError(f"--evidence must be one of {FLAG_RULES}, not {p.evidence!r}")
    if not isinstance(p.tau, int) or p.tau < 1:
        raise EftclipError(f"--tau must be a positive integer, got {p.tau!r}")
    if vocab_size is not None and p.tau > vocab_size:
        raise EftclipError(f"--tau {p.tau} is larger than the vocabulary ({vocab_size} labels)")
    if prompt_tau is not None and p.tau > prompt_tau:
        raise EftclipError(f"--tau {p.tau} is larger than the stored list length (prompt tau {prompt_tau})")
    if not (0.0 <= float(p.theta) <= 1.0):
        raise EftclipError(f"--theta must lie in [0, 1], got {p.theta}")
    if not (0.0 <= float(p.min_share) <= 1.0):
        raise EftclipError(f"--min-share must lie in [0, 1], got {p.min_share}")
    if int(p.min_count) < 1:
        raise EftclipError(f"--min-count must be at least 1, got {p.min_count}")


def check_run_settings(cfg: DetectConfig) -> None:
    """The checks that need no data: on_error, batch size, pass-2 settings, the oracle's name when built here."""
    if cfg.on_error not in ON_ERROR:
        raise EftclipError(f"--on-error must be one of {ON_ERROR}, not {cfg.on_error!r}")
    if cfg.batch_size < 1:
        raise EftclipError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    check_params(cfg, prompt_tau=cfg.list_length)
