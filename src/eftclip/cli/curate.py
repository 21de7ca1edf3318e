"""``eftclip curate``: the compact fine-tuning set from a detection's affected-label profile."""

from __future__ import annotations

import argparse
import sys

from eftclip.cli.checks import warn_empty_profile
from eftclip.guards import check_count, check_io


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "curate",
        help="draw a fine-tuning set whose label mix follows the affected labels",
        description=(
            "Each affected label gets a share of SIZE in proportion to its frequency; every unaffected "
            "vocabulary label gets R times the share of the least frequent affected label. Pool items are "
            "labelled from their captions (plural-aware word match) or by a clean CLIP. Writes "
            "OUT/finetune.csv (CleanCLIP layout), OUT/manifest.json (realised shares, shortfalls), OUT/config.yaml."
        ),
    )
    p.add_argument("--detection", required=True, help="output folder of `eftclip detect`")
    p.add_argument("--pool", required=True, help="caption CSV/TSV/webdataset of clean image-text pairs")
    p.add_argument("--size", required=True, type=int, help="number of pairs to draw")
    p.add_argument("--unaffected-ratio", type=float, default=0.25,
                   help="R in [0, 1]: an unaffected label's share relative to the least frequent affected label (default 0.25)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--label-by", choices=("caption", "clip"), default="caption",
                   help="label pool items by caption words (default) or by a clean CLIP's top-1 label")
    p.add_argument("--clip-checkpoint", help="clean CLIP for --label-by clip")
    p.add_argument("--vocab", help="label file overriding the detection's vocabulary")
    p.add_argument("--device", default="cpu", help="torch device for --label-by clip (default cpu)")
    p.add_argument("--repair-share", type=float, default=0.0,
                   help="share of the pairs taken from flagged images, captioned with the oracle's affected "
                        "labels (an extension beyond the paper; default 0)")
    p.add_argument("--unlearn-share", type=float, default=0.0,
                   help="share of the pairs taken from flagged images (which carry the trigger), captioned with "
                        "the objects the detection's second look found there (beyond the paper; default 0; "
                        "needs second_look.jsonl in the detection folder)")
    p.add_argument("--profile", choices=("paper", "second_look"), default=None,
                   help="affected-label profile the pool draw follows (default: the second look's when the "
                        "detection folder holds one, else the paper's)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from eftclip.curation import curate
    from eftclip.detection.vocab import load_vocab

    check_count(args.size, "--size", optional=False)
    check_io({"--detection": args.detection, "--pool": args.pool, "--clip-checkpoint": args.clip_checkpoint,
              "--vocab": args.vocab}, {"--out": args.out})
    warn_empty_profile(args.detection, args.profile)
    vocab = load_vocab(args.vocab) if args.vocab else None
    m = curate(args.detection, args.pool, size=args.size, unaffected_ratio=args.unaffected_ratio, out=args.out,
               seed=args.seed, label_by=args.label_by, clip_checkpoint=args.clip_checkpoint, vocab=vocab,
               device=args.device, repair_share=args.repair_share, unlearn_share=args.unlearn_share,
               profile=args.profile)
    short = f", shortfalls {m['shortfalls']}" if m["shortfalls"] else ""
    u = m["unlearn"]
    unlearn = (f", {u['taken']} unlearning pairs ({u['shortfall']} short, {u['skipped_no_affected']} flagged images "
               f"with nothing found skipped)" if u["asked"] else "")
    print(f"wrote {m['size']} pairs to {m['csv']} (profile {m['profile']}, fill {m['fill']['drawn']}{short}{unlearn})",
          file=sys.stderr)
    return 0
