"""``eftclip sweep``: detection rate against patch size, position, confidence and list length (Figures 3, 4)."""

from __future__ import annotations

import argparse
import sys

from eftclip.cli.checks import check_detect_inputs
from eftclip.cli.values import parse_key_values
from eftclip.errors import EftclipError
from eftclip.guards import check_count, check_device


def _list(text: str | None, kind, flag: str):
    if text is None:
        return None
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise EftclipError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep",
        help="detection rate against patch size rho, position mu, confidence theta and list length tau",
        description=(
            "Stamps a patch trigger of each size rho at each position mu on the given clean images, runs the "
            "detection's model pass once per (rho, mu) (and once on the clean images), then re-decides for "
            "every theta and tau from the stored scores. Writes OUT/sweep.csv, sweep.json, figure3.png, "
            "figure4.png, config.yaml; resumable."
        ),
    )
    p.add_argument("--checkpoint", help="the poisoned CLIP (.safetensors with its JSON side file)")
    p.add_argument("--model", help="open_clip architecture (with --pretrained, or a foreign --checkpoint), or hf-hub:org/name")
    p.add_argument("--pretrained", metavar="TAG|FILE", help="open_clip pretrained tag, hf-hub:org/name or weights file")
    p.add_argument("--images", required=True, help="clean images: caption CSV/TSV/webdataset or a folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--target", help="the attack's target label (added to the vocabulary; is it in K?)")
    p.add_argument("--vocab", default="mined", help="label file, or 'mined' (default)")
    p.add_argument("--labels", help="comma-separated labels always in the vocabulary")
    p.add_argument("--oracle", default="reference", help="oracle backend (default reference)")
    p.add_argument("--oracle-arg", action="append", default=[], metavar="KEY=VALUE", help="oracle argument, repeatable")
    p.add_argument("--oracle-model", metavar="DIR|FILE|HUB_ID", help="the oracle's weights (e.g. google/owlv2-base-patch16-ensemble)")
    p.add_argument("--sam-model", metavar="DIR|HUB_ID", help="owlv2/grounding-dino: refine boxes to masks with this SAM")
    p.add_argument("--trigger", default="badnet", help="patch trigger (default badnet)")
    p.add_argument("--trigger-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="other trigger parameter, repeatable (e.g. pattern=noise, pattern_seed=0)")
    p.add_argument("--rho", default="8,16", help="patch sides in pixels (default 8,16)")
    p.add_argument("--mu", default="random,top-left,bottom-right", help="patch positions (default random,top-left,bottom-right)")
    p.add_argument("--theta", default="0.5,0.58,0.66,0.74,0.82", help="confidence thresholds")
    p.add_argument("--tau", default="5,7", help="list lengths (default 5,7)")
    p.add_argument("--mode", choices=("robust", "faithful"), default="robust", help="detection mode (default robust)")
    p.add_argument("--flag-rule", choices=("top1", "topk"), default="top1", help="robust flag rule (default top1)")
    p.add_argument("--min-share", type=float, default=0.66, help="robust q (default 0.66)")
    p.add_argument("--min-count", type=int, default=5, help="robust m (default 5)")
    p.add_argument("--no-clean", action="store_true", help="skip the untouched images (no precision/false positives)")
    p.add_argument("--max-images", type=int, help="only the first N images")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image trigger randomness (default 0)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from eftclip.detection.sweep import SweepConfig, run_sweep
    from eftclip.models import load_clip
    from eftclip.oracles import model_kwargs

    check_count(args.max_images, "--max-images")  # cheap checks before the model is loaded
    check_device(args.device)
    # the CLIP by file or by name, loaded before anything is written (an uncached tag leaves no --out)
    bundle = load_clip(checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained, device=args.device)
    cfg = SweepConfig(
        checkpoint=bundle.checkpoint, images=args.images, out=args.out, target=args.target, vocab=args.vocab,
        labels=tuple(s.strip() for s in (args.labels or "").split(",") if s.strip()), oracle=args.oracle,
        oracle_args={**model_kwargs(args.oracle, args.oracle_model, args.sam_model),
                     **parse_key_values(args.oracle_arg, "--oracle-arg")}, trigger=args.trigger,
        trigger_args=parse_key_values(args.trigger_arg, "--trigger-arg"), rhos=_list(args.rho, int, "--rho"),
        mus=_list(args.mu, str, "--mu"), thetas=_list(args.theta, float, "--theta"),
        taus=_list(args.tau, int, "--tau"), mode=args.mode, flag_rule=args.flag_rule, min_share=args.min_share,
        min_count=args.min_count, include_clean=not args.no_clean, max_images=args.max_images,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
    )
    check_detect_inputs(cfg)
    rows = run_sweep(cfg, bundle=bundle)
    best = max((r["detection_rate"] or 0.0 for r in rows), default=0.0)
    print(f"sweep: {len(rows)} settings, best detection rate {best:.3f} -> {args.out}", file=sys.stderr)
    return 0
