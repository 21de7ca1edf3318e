"""``eftclip detect``: oracle-guided trigger detection (Algorithm 1) and affected labels (Algorithm 2)."""

from __future__ import annotations

import argparse
import sys

from eftclip.cli.checks import check_detect_inputs
from eftclip.cli.values import parse_key_values
from eftclip.errors import EftclipError


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
    p.add_argument("--config", help="YAML file of defaults (keys as in DetectConfig); flags override it")
    p.add_argument("--checkpoint", help="the suspect CLIP (.safetensors with its JSON side file)")
    p.add_argument("--model", help="open_clip architecture (with --pretrained, or a foreign --checkpoint), or hf-hub:org/name")
    p.add_argument("--pretrained", metavar="TAG|FILE", help="open_clip pretrained tag (openai, laion2b_s34b_b79k), hf-hub:org/name or weights file")
    p.add_argument("--images", help="caption CSV/TSV/webdataset (with is_poisoned when known) or a folder of images")
    p.add_argument("--out", help="output folder")
    p.add_argument("--vocab", help="label file (.txt one per line, or .json list), or 'mined' (default: mined)")
    p.add_argument("--labels", help="comma-separated labels always added to the vocabulary")
    p.add_argument("--vocab-size", type=int, help="mined vocabulary: at most this many labels (default 200)")
    p.add_argument("--vocab-min-count", type=int, help="mined vocabulary: least caption count (default 3)")
    p.add_argument("--oracle", help="oracle backend: reference, onnx-detector, fastsam, owlv2, grounding-dino")
    p.add_argument("--oracle-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an oracle constructor argument, repeatable (VALUE parsed as JSON when it can be)")
    p.add_argument("--oracle-model", metavar="DIR|FILE|HUB_ID", help="the oracle's weights (e.g. google/owlv2-base-patch16-ensemble)")
    p.add_argument("--sam-model", metavar="DIR|HUB_ID", help="owlv2/grounding-dino: refine boxes to masks with this SAM")
    p.add_argument("--tau", type=int, help="length of CLIP's label list (default 5)")
    p.add_argument("--prompt-tau", type=int, help="prompt the oracle with this many labels (>= tau), for tau sweeps")
    p.add_argument("--theta", type=float, help="oracle confidence threshold in [0, 1] (default 0.66)")
    p.add_argument("--mode", choices=("robust", "faithful"), help="robust (default) or faithful (the paper as written)")
    p.add_argument("--flag-rule", choices=("top1", "topk"), help="robust: trigger at rank 1 (default) or anywhere in L_i")
    p.add_argument("--evidence", choices=("top1", "topk"), help="robust: count a label where CLIP ranks it first (top1, default) or anywhere in L_i (topk)")
    p.add_argument("--min-share", type=float, help="robust q: unconfirmed share for a label to enter K (default 0.66)")
    p.add_argument("--min-count", type=int, help="robust m: least judged images for a label to enter K (default 5)")
    p.add_argument("--target", help="the true attack target, when known (metrics report whether it is in K)")
    p.add_argument("--template", action="append", help="CLIP prompt template with one '{}', repeatable")
    p.add_argument("--crop-pad", type=float, help="grow oracle boxes by this fraction before cropping (default 0)")
    p.add_argument("--batch-size", type=int, help="images per batch (default 32)")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--on-error", choices=("skip", "fail"), help="unreadable image: skip and count (default) or fail")
    p.add_argument("--max-images", type=int, help="examine only the first N images")
    p.add_argument("--resume", action="store_true", help="keep the records of a run with other pass-2 settings")
    p.add_argument("--force", action="store_true", help="discard a run already in --out and start over")
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace):
    from eftclip.config import from_mapping, load_yaml, merge
    from eftclip.detection.runner import DetectConfig
    from eftclip.oracles import model_kwargs

    base = load_yaml(args.config) if args.config else {}
    flags = {
        "checkpoint": args.checkpoint, "images": args.images, "out": args.out, "vocab": args.vocab,
        "labels": [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None,
        "vocab_size": args.vocab_size, "vocab_min_count": args.vocab_min_count, "oracle": args.oracle,
        "oracle_args": {**model_kwargs(args.oracle or base.get("oracle") or "", args.oracle_model, args.sam_model),
                        **parse_key_values(args.oracle_arg, "--oracle-arg")} or None, "tau": args.tau,
        "prompt_tau": args.prompt_tau, "theta": args.theta, "mode": args.mode, "flag_rule": args.flag_rule,
        "evidence": args.evidence, "min_share": args.min_share, "min_count": args.min_count,
        "target": args.target, "templates": args.template, "crop_pad": args.crop_pad,
        "batch_size": args.batch_size, "device": args.device, "on_error": args.on_error,
        "max_images": args.max_images, "resume": args.resume or None, "force": args.force or None,
    }
    values = merge({k.replace("-", "_"): v for k, v in base.items()}, flags)
    for required in ("checkpoint", "images", "out"):
        if not values.get(required):
            raise EftclipError(f"--{required} is required (on the command line or in --config)")
    for key in ("labels", "templates"):
        if key in values:
            values[key] = tuple(values[key])
    return from_mapping(DetectConfig, values, source=args.config or "flags")


def run(args: argparse.Namespace) -> int:
    from eftclip.detection.runner import run_detection

    bundle = None
    if args.model or args.pretrained:  # a CLIP by name: resolved (and fetched) before anything is written
        from eftclip.models import load_clip, resolve_clip_weights

        args.checkpoint = resolve_clip_weights(checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained)[0]
    cfg = build_config(args)
    check_detect_inputs(cfg, config=args.config)
    if args.model or args.pretrained:
        bundle = load_clip(checkpoint=None if args.pretrained else cfg.checkpoint, model=args.model,
                           pretrained=args.pretrained, device=cfg.device)
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
