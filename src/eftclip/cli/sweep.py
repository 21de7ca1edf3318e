"""``eftclip sweep``: detection rate against patch size, position, confidence and list length (Figures 3, 4)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from eftclip.cli.checks import check_detect_inputs
from eftclip.cli.config_flags import add_config_flags
from eftclip.cli.detect import add_clip_flags, add_oracle_model_flags, build_config, load_named_clip, resolve_named_clip
from eftclip.detection.sweep import SweepConfig, run_sweep


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
    add_config_flags(p, SweepConfig)
    add_clip_flags(p)
    add_oracle_model_flags(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    resolve_named_clip(args)
    cfg = build_config(args, SweepConfig)
    check_detect_inputs(cfg, config=args.config)  # cheap checks before the model is loaded
    # the CLIP by file or by name, loaded before anything is written (an uncached tag leaves no --out)
    bundle = load_named_clip(args, cfg)
    rows = run_sweep(dataclasses.replace(cfg, checkpoint=bundle.checkpoint), bundle=bundle)
    best = max((r["detection_rate"] or 0.0 for r in rows), default=0.0)
    print(f"sweep: {len(rows)} settings, best detection rate {best:.3f} -> {cfg.out}", file=sys.stderr)
    return 0
