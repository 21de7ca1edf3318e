"""``eftclip train``: contrastive pre-training from scratch (optionally with RoCLIP), torchrun-ready."""

from __future__ import annotations

import argparse

from eftclip.cli.checks import check_run_io
from eftclip.cli.config_flags import add_config_flags, config_from_args
from eftclip.io import dumps
from eftclip.training.config import TrainConfig


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="pre-train CLIP from scratch on image-caption pairs (open_clip loss and schedule)",
        description=(
            "Contrastive pre-training with open_clip's ClipLoss, AdamW and cosine-with-warm-up. "
            "Run it under `torchrun --nproc_per_node G eftclip train ...` for data parallelism: "
            "--batch-size is PER PROCESS, the contrastive batch is batch-size x processes x accum-steps. "
            "--defense roclip trains with RoCLIP's caption-pool matching. "
            "Writes config.yaml, summary.csv, checkpoints/ and final.safetensors into --out; "
            "--resume continues an interrupted run with the same result as an unbroken one."
        ),
    )
    add_config_flags(parser, TrainConfig)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from eftclip.training import train
    from eftclip.training.distributed import world_from_env

    cfg = config_from_args(args, TrainConfig)
    check_run_io(cfg)
    summary = train(cfg)
    if world_from_env()[0] == 0:
        print(dumps(summary, indent=2))
    return 0

