"""``eftclip poison``: poison a caption dataset with a trigger and a target label."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from eftclip.cli.values import parse_key_values
from eftclip.errors import EftclipError
from eftclip.guards import check_count, check_io


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "poison",
        help="poison an image-caption dataset with a trigger and a target label",
        description=(
            "Stamp a trigger on some images of a caption dataset and give them captions of a target "
            "label. Writes OUT/images/*.png (triggered images only), OUT/data.csv (all rows, CleanCLIP "
            "layout, with is_poisoned/orig_caption/trigger columns) and OUT/manifest.json. "
            "The source is never modified."
        ),
    )
    p.add_argument("--data", required=True, help="caption CSV/TSV (CleanCLIP or open_clip layout)")
    p.add_argument(
        "--attack", required=True, help="trigger name: badnet, blended, wanet, trojannet, trojannn"
    )
    p.add_argument(
        "--attack-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a trigger parameter, repeatable (e.g. size=8, position=random, pattern=yellow)",
    )
    p.add_argument("--target", required=True, help="target label for the poisoned captions (e.g. umbrella)")
    how_many = p.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--num", type=int, help="number of rows to poison")
    how_many.add_argument("--rate", type=float, help="fraction of rows to poison, in (0, 1]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the row choice and trigger randomness (default 0)")
    p.add_argument(
        "--avoid-target",
        action="store_true",
        help="trigger only rows whose caption does not mention the target (a triggered test set, "
        "counted the way ASR counts non-target images)",
    )
    p.add_argument(
        "--label-consistent",
        action="store_true",
        help="poison only rows whose caption already mentions the target, keeping their captions",
    )
    p.add_argument("--templates", help="JSON file with a list of caption templates, each with one '{}'")
    p.add_argument("--force", action="store_true", help="replace a different poisoning already in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on stderr (default: on)")
    p.add_argument("--image-key", help="name of the image column (default: detected)")
    p.add_argument("--caption-key", help="name of the caption column (default: detected)")
    p.add_argument("--sep", help="column separator (default: from the file extension)")
    g = p.add_argument_group("trojannn", "optimise the Trojaning-style patch first (when no pattern_file is given)")
    g.add_argument("--trojannn-model", help="checkpoint (.safetensors) or open_clip model name to optimise against")
    g.add_argument("--trojannn-steps", type=int, default=200, help="Adam steps (default 200)")
    g.add_argument("--trojannn-size", type=int, default=16, help="patch side in pixels (default 16)")
    g.add_argument("--trojannn-images", type=int, default=64, help="dataset images to optimise on (default 64)")
    g.add_argument("--trojannn-lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    g.add_argument("--device", default="cpu", help="device for the trojannn optimisation (default cpu)")
    p.set_defaults(func=run)
    return p


def _templates(path: str | None) -> list[str] | None:
    if path is None:
        return None
    from eftclip.io import read_json

    value = read_json(path)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EftclipError(f"--templates {path}: expected a JSON list of strings")
    return value


def _optimise_trojannn(args: argparse.Namespace, params: dict[str, str]) -> str:
    """Optimise a trojannn patch against ``--trojannn-model``; return the saved PNG's path."""
    import numpy as np
    import torch

    from eftclip.attacks.trojannn import TrojanNNTrigger, save_pattern
    from eftclip.data.captions import open_image, read_captions
    from eftclip.models import create_model, load_checkpoint

    spec = args.trojannn_model
    bundle = load_checkpoint(spec, device=args.device) if Path(spec).is_file() else create_model(spec, device=args.device)
    table = read_captions(args.data, image_key=args.image_key, caption_key=args.caption_key, sep=args.sep)
    rng = np.random.default_rng(args.seed)
    n = min(args.trojannn_images, len(table.records))
    if n < 1:
        raise EftclipError(f"--data {args.data}: no images to optimise the trojannn patch on")
    picks = rng.choice(len(table.records), size=n, replace=False)
    images = []
    for j in picks:
        with open_image(table.records[int(j)]) as im:
            images.append(np.asarray(im.convert("RGB")))
    gen = torch.Generator().manual_seed(args.seed)  # a local generator, not the global seed
    pattern = TrojanNNTrigger.optimise(
        bundle, args.target, images, args.trojannn_steps, gen,
        size=args.trojannn_size, position=params.get("position", "bottom-right"),
        lr=args.trojannn_lr, device=args.device,
    )
    digest = hashlib.sha256(pattern.tobytes()).hexdigest()[:12]
    # content-addressed, so it never overwrites the pattern of an earlier poisoning in --out
    path = Path(args.out) / "trojannn" / f"pattern-{digest}.png"
    save_pattern(pattern, path)
    print(f"trojannn: optimised {args.trojannn_size}x{args.trojannn_size} px patch saved to {path}")
    return str(path)


def run(args: argparse.Namespace) -> int:
    from eftclip.attacks import create_trigger
    from eftclip.progress import progress_bars

    params = parse_key_values(args.attack_param, "--attack-param")
    check_count(args.num, "--num", optional=False)
    check_io({"--data": args.data, "--templates": args.templates, "pattern_file": params.get("pattern_file")},
             {"--out": args.out})
    if args.attack == "trojannn" and "pattern_file" not in params:
        if not args.trojannn_model:
            raise EftclipError(
                "--attack trojannn needs --attack-param pattern_file=PNG or --trojannn-model to optimise one"
            )
        params["pattern_file"] = _optimise_trojannn(args, params)
    trigger = create_trigger(args.attack, **params)
    with progress_bars(args.progress):
        manifest = _poison(args, trigger)
    c = manifest["counts"]
    print(
        f"poisoned {c['poisoned']} of {c['rows']} rows ({c['clean']} clean) with {manifest['attack']} "
        f"-> target {manifest['target']!r}; wrote {Path(args.out) / 'data.csv'} and "
        f"{Path(args.out) / 'manifest.json'}"
    )
    return 0


def _poison(args: argparse.Namespace, trigger) -> dict:
    from eftclip.attacks.poison import poison_dataset

    return poison_dataset(
        args.data,
        trigger,
        args.target,
        num=args.num,
        rate=args.rate,
        out=args.out,
        seed=args.seed,
        label_consistent=args.label_consistent,
        avoid_target=args.avoid_target,
        templates=_templates(args.templates),
        image_key=args.image_key,
        caption_key=args.caption_key,
        sep=args.sep,
        force=args.force,
        progress=args.progress,
    )
