"""``eftclip world``: make the built-in synthetic world and train its oracle's region classifier."""

from __future__ import annotations

import argparse

from eftclip.guards import check_count, check_io
from eftclip.io import dumps


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "world",
        help="the built-in synthetic world: `synth` writes one, `oracle` trains its region classifier",
        description="Procedural scenes of flat-coloured shapes with captions, a zero-shot set and the world's oracle.",
    )
    sub = parser.add_subparsers(dest="world_command", metavar="<command>", required=True)

    p = sub.add_parser(
        "synth",
        help="write a world (train/pool/detect scenes, reference crops, eval ImageFolder)",
        description=(
            "Write a deterministic synthetic world into --out: train/ and pool/ and detect/ "
            "(PNG scenes, CleanCLIP CSV `image,caption`, *_meta.jsonl with boxes and masks), "
            "reference/ (clean crops for the region classifier), eval/ (zero-shot ImageFolder), "
            "classnames.json and world.json. Same seed -> identical files."
        ),
    )
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quick", action="store_true", help="a small world (for CI and smoke tests)")
    p.add_argument("--size", default=None, help="world preset: default, quick or tiny (overrides --quick)")
    p.add_argument("--train", type=int, default=None, help="number of training scenes (overrides the preset)")
    p.add_argument("--image-size", type=int, default=32, help="scene side in pixels (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing world in --out")
    p.set_defaults(func=run_synth)

    o = sub.add_parser(
        "oracle",
        help="train the world oracle's region classifier on reference/ only",
        description="Train the small CNN that names region crops, on WORLD/reference only (clean data).",
    )
    o.add_argument("--world", required=True, help="world folder written by `eftclip world synth`")
    o.add_argument("--out", required=True, help="output .safetensors path (a .json side file is written beside it)")
    o.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    o.add_argument("--epochs", type=int, default=10, help="training epochs over the reference crops (default 10)")
    o.add_argument("--seconds", type=float, default=None, help="stop early after this much wall time")
    o.set_defaults(func=run_oracle)
    return parser


def run_synth(args: argparse.Namespace) -> int:
    from eftclip.world import synth

    size = args.size or ("quick" if args.quick else "default")
    paths = synth(args.out, seed=args.seed, size=size, image_size=args.image_size, train=args.train, overwrite=args.overwrite)
    print(dumps(paths, indent=2))
    return 0


def run_oracle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eftclip.io import read_json
    from eftclip.world import train_region_classifier, world_paths

    paths = world_paths(args.world)
    check_count(args.epochs, "--epochs", optional=False)
    check_io({"--world": args.world}, {"--out": args.out})
    out = train_region_classifier(paths["reference"], args.out, seed=args.seed, epochs=args.epochs, seconds=args.seconds)
    meta = read_json(Path(out).with_suffix(".json"))
    print(dumps({"region_classifier": str(out), "metrics": meta["metrics"]}, indent=2))
    return 0
