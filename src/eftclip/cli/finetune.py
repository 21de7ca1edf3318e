"""``eftclip finetune``: CleanCLIP (or plain CLIP) fine-tuning of a checkpoint."""

from __future__ import annotations

import argparse

from eftclip.cli.checks import check_run_io
from eftclip.cli.config_flags import add_config_flags, config_from_args
from eftclip.io import dumps
from eftclip.training.config import FinetuneConfig


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a CLIP checkpoint with CleanCLIP's objective (or plain CLIP)",
        description=(
            "--objective cleanclip: multimodal contrastive loss (weight --clip-weight) plus in-modal "
            "self-supervision (weight --inmodal-weight): each image against its AutoAugment view, each "
            "caption against its EDA variant. --objective clip: contrastive loss only. "
            "--subset N --subset-seed S fine-tunes on a random subset of N pairs (the CleanCLIP baseline). "
            "--batch-size is PER PROCESS. Paper defaults: 10 epochs, batch 64, lr 1e-5, 50 warm-up steps."
        ),
    )
    add_config_flags(parser, FinetuneConfig)
    parser.add_argument("--pretrained", metavar="TAG|FILE",
                        help="instead of --checkpoint: open_clip tag of --model (openai, laion2b_s34b_b79k), "
                             "hf-hub:org/name, or a weights file")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from eftclip.training import finetune
    from eftclip.training.distributed import world_from_env

    from eftclip.models import resolve_clip_weights
    from eftclip.models.hub import is_hub_name

    if args.pretrained or is_hub_name(args.model):  # a start by name: its file in the hub cache
        args.checkpoint, args.model = resolve_clip_weights(
            checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained)
    cfg = config_from_args(args, FinetuneConfig)
    check_run_io(cfg, checkpoint=cfg.checkpoint)
    summary = finetune(cfg)
    if world_from_env()[0] == 0:
        print(dumps(summary, indent=2))
    return 0
