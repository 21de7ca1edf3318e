"""``eftclip defend``: from a suspect CLIP to a verdict and, when a backdoor is found, a repaired model."""

from __future__ import annotations

import argparse
import json

from eftclip.cli.config_flags import add_config_flags, config_from_args
from eftclip.pipeline.defend import DefendConfig


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "defend",
        help="detect a backdoor in your CLIP, recover its trigger and repair the model",
        description=(
            "Detect over --data with the oracle; print and write a verdict. When a backdoor is found: a second "
            "look at the flagged images, trigger recovery (OUT/trigger/mask.png, pattern.png), a curated set from "
            "--pool (unlearning pairs + the second-look profile) and fine-tuning with the eftclip recipe "
            "(OUT/repaired.safetensors). With --eval DIR --classes SPEC: CA and ASR before and after under the "
            "recovered trigger (and, for studies, under --true-attack, labelled as scoring the defense did not "
            "use). Writes OUT/report.md, metrics.json, verdict.txt, config.yaml; resumable stage by stage."),
    )
    add_config_flags(p, DefendConfig)
    p.add_argument("--resume", action="store_true", help="continue a run in --out made with other settings")
    p.add_argument("--force", action="store_true", help="delete the defend run in --out and start over")
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace) -> DefendConfig:
    return config_from_args(args, DefendConfig)


def run(args: argparse.Namespace) -> int:
    from eftclip.pipeline.defend import run_defend

    metrics = run_defend(build_config(args), resume=args.resume, force=args.force)
    print(json.dumps({"verdict": metrics["verdict"], "evaluation": metrics.get("evaluation")}, indent=2))
    return 0
