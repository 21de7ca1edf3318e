"""``eftclip detect``: oracle-guided trigger detection (Algorithm 1) and affected labels (Algorithm 2)."""

from __future__ import annotations

import argparse
import sys

from eftclip.cli.checks import check_detect_inputs
from eftclip.cli.config_flags import add_config_flags, config_from_args
from eftclip.detection.config import DetectConfig
from eftclip.oracles import model_kwargs

# fields that are no flags: the figure's size and the ranks' merge wait are set in --config only
NOT_FLAGS = ("figure_n", "merge_timeout_s")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "detect",
        help="find trigger labels, flagged images and affected labels with an oracle",
        description=(
            "For every image: the suspect CLIP's top-tau labels L_i, the oracle prompted with them "
            "(finds kept at confidence >= theta: S_i, with boxes), CLIP's labels for the oracle's crops R_i; "
            "then Algorithm 1 (trigger labels K) and Algorithm 2 (affected labels). Writes OUT/triggers.json, "
            "images.jsonl, affected_labels.csv, metrics.json, figure7.png, config.yaml. Resumes a killed run; "
            "shards across processes under torchrun (RANK/WORLD_SIZE)."
        ),
    )
    add_config_flags(p, DetectConfig, skip=NOT_FLAGS)
    add_clip_flags(p)
    add_oracle_model_flags(p)
    p.set_defaults(func=run)
    return p


def add_clip_flags(p: argparse.ArgumentParser) -> None:
    """detect and sweep: the suspect CLIP by name instead of (or with a foreign) --checkpoint."""
    p.add_argument("--model", help="open_clip architecture (with --pretrained, or a foreign --checkpoint), "
                                   "or hf-hub:org/name")
    p.add_argument("--pretrained", metavar="TAG|FILE", help="open_clip pretrained tag (openai, laion2b_s34b_b79k), "
                                                            "hf-hub:org/name or weights file")


def add_oracle_model_flags(p: argparse.ArgumentParser) -> None:
    """detect and sweep: oracle weights by flag, merged into the oracle's arguments by build_config."""
    p.add_argument("--oracle-model", metavar="DIR|FILE|HUB_ID",
                   help="the oracle's weights (e.g. google/owlv2-base-patch16-ensemble)")
    p.add_argument("--sam-model", metavar="DIR|HUB_ID", help="owlv2/grounding-dino: refine boxes to masks with this SAM")


def build_config(args: argparse.Namespace, cls: type = DetectConfig):
    """``cls`` (DetectConfig or SweepConfig) from its defaults, --config and the flags.

    ``--oracle-model`` / ``--sam-model`` become oracle arguments of the oracle the config names
    (so the YAML's ``oracle`` counts): above the YAML's ``oracle_args``, below ``--oracle-arg``.
    """
    cfg = config_from_args(args, cls)
    implied = model_kwargs(cfg.oracle, args.oracle_model, args.sam_model)
    return config_from_args(args, cls, implied={"oracle_args": implied}) if implied else cfg


def resolve_named_clip(args: argparse.Namespace) -> None:
    """A CLIP by --model/--pretrained: its weights file becomes ``args.checkpoint`` (fetched when online and
    missing) before anything is written; an uncached tag offline is an error naming the flags."""
    if args.model or args.pretrained:
        from eftclip.models import resolve_clip_weights

        args.checkpoint = resolve_clip_weights(checkpoint=args.checkpoint, model=args.model,
                                               pretrained=args.pretrained)[0]


def load_named_clip(args: argparse.Namespace, cfg):
    """The CLIP the flags name, on ``cfg.device``: a tag loads with its own preprocessing, a file by its side file."""
    from eftclip.models import load_clip

    return load_clip(checkpoint=None if args.pretrained else cfg.checkpoint, model=args.model,
                     pretrained=args.pretrained, device=cfg.device)


def run(args: argparse.Namespace) -> int:
    from eftclip.detection.runner import run_detection

    resolve_named_clip(args)
    cfg = build_config(args)
    check_detect_inputs(cfg, config=args.config)
    # by name: loaded here (a tag keeps its preprocessing); by file: the runner loads it where it needs it
    bundle = load_named_clip(args, cfg) if args.model or args.pretrained else None
    m = run_detection(cfg, bundle=bundle)
    if "rank" in m:
        return 0
    rate = m.get("detection_rate")
    print(
        f"K = {m['K']}  flagged {m['n_flagged']}/{m['n_images']} images"
        + (f"  detection rate {rate:.3f}" if rate is not None else "")
        + (f"  precision {m['precision']:.3f}" if m.get("precision") is not None else "")
        + (f"  FPR {m['false_positive_rate']:.3f}" if m.get("false_positive_rate") is not None else "")
        + f"  -> {cfg.out}",
        file=sys.stderr,
    )
    for warning in m.get("warnings", []):
        print(f"eftclip detect: warning: {warning}", file=sys.stderr)
    return 0
