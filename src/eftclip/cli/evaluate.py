"""``eftclip evaluate``: zero-shot clean accuracy and attack success rate of a checkpoint."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from eftclip.cli.values import parse_key_values
from eftclip.errors import EftclipError
from eftclip.guards import check_count, check_device, check_io, check_output_file
from eftclip.precision import PRECISIONS

_EPILOG = """\
examples:
  eftclip evaluate --checkpoint run/final.safetensors --data cifar10/test --classes cifar10
  eftclip evaluate --checkpoint clip.pt --model RN50 --data imagenet/val --classes imagenet1k \\
      --attack badnet --attack-params size=16 position=random --target banana --out eval.json

The JSON written by --out holds {"config": the resolved settings, "metrics": {n, ca_top1,
ca_top5, asr, n_asr, target, per_class{name: {ca_top1, asr, n}}}}; rates are fractions in [0, 1].
"""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="zero-shot clean accuracy (CA) and attack success rate (ASR) of a CLIP checkpoint",
        description=(
            "Classify an image folder (root/<class>/<image>) zero-shot with a CLIP checkpoint; "
            "with --attack, also apply the trigger to every image whose class is not the target "
            "and report the share classified as --target (ASR)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="weights file: .safetensors, or a weights-only torch file "
                        "(open_clip, OpenAI or CleanCLIP layout)")
    p.add_argument("--model", metavar="NAME",
                   help="open_clip architecture (e.g. RN50, ViT-B-32, eftclip-tiny-vit); "
                        "default: the one recorded in the checkpoint's .json side file; or hf-hub:org/name")
    p.add_argument("--pretrained", metavar="TAG|FILE",
                   help="instead of --checkpoint: open_clip tag of --model (openai, laion2b_s34b_b79k), "
                        "hf-hub:org/name, or a weights file")
    p.add_argument("--data", required=True, metavar="DIR", help="image folder root/<class>/<image>")
    p.add_argument("--classes", metavar="NAME|FILE",
                   help="class display names: cifar10, imagenet1k, or a JSON list/mapping; default: folder names")
    p.add_argument("--templates", metavar="NAME|FILE",
                   help="prompt templates: openai, simple, cifar10, or a JSON list of '{}' strings; "
                        "default: cifar10 with --classes cifar10, else openai")
    p.add_argument("--attack", metavar="NAME",
                   help="trigger to apply for ASR (badnet, blended, wanet, trojannet, trojannn)")
    p.add_argument("--attack-params", nargs="+", default=[], metavar="JSON|K=V",
                   help="trigger parameters: one JSON object, or key=value pairs")
    p.add_argument("--target", metavar="LABEL", help="the attack's target class (display or folder name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image trigger randomness (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="image tower arithmetic: bf16 autocasts on CUDA or a CPU with native bf16; auto = bf16 on "
                        "CUDA, fp32 on CPU (default fp32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for image loading (default 0)")
    p.add_argument("--max-per-class", type=int, metavar="N", help="evaluate only the first N images of each class")
    p.add_argument("--out", metavar="FILE.json", help="write the resolved config and metrics here (atomic)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def parse_attack_params(values: list[str]) -> dict[str, Any]:
    """``['{"size": 8}']`` or ``['size=8', 'position=random']`` -> dict (k=v values decoded as
    :func:`eftclip.cli.values.parse_key_values` decodes every verb's KEY=VALUE)."""
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            params = json.loads(values[0])
        except json.JSONDecodeError as exc:
            raise EftclipError(f"--attack-params: not valid JSON ({exc})") from None
        if not isinstance(params, dict):
            raise EftclipError("--attack-params: the JSON must be an object of parameter: value")
        return params
    return parse_key_values(values, "--attack-params")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:6.2f} %"


def format_table(metrics: dict[str, Any], *, per_class_limit: int = 20) -> str:
    """A short plain-text summary of :func:`eftclip.evaluation.evaluate`'s result."""
    lines = [
        f"images     {metrics['n']}  ({len(metrics['per_class'])} classes)",
        f"CA top-1   {_pct(metrics['ca_top1'])}",
        f"CA top-5   {_pct(metrics['ca_top5'])}",
    ]
    if metrics.get("target") is not None and metrics.get("n_asr"):
        lines.append(f"ASR        {_pct(metrics['asr'])}  (target {metrics['target']!r}, "
                     f"{metrics['n_asr']} triggered non-target images)")
    rows = metrics["per_class"]
    if len(rows) <= per_class_limit:
        width = max(len("class"), *(len(k) for k in rows))
        lines.append("")
        lines.append(f"{'class':<{width}}  {'n':>5}  {'CA top-1':>9}  {'ASR':>9}")
        for name, r in rows.items():
            lines.append(f"{name:<{width}}  {r['n']:>5}  {_pct(r['ca_top1']):>9}  {_pct(r['asr']):>9}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from eftclip.data.zeroshot import ImageFolderSet, load_templates
    from eftclip.evaluation import evaluate
    from eftclip.io import portable_paths, write_json
    from eftclip.models import load_clip, resolve_clip_weights

    if args.attack_params and not args.attack:
        raise EftclipError("--attack-params given without --attack")
    if args.attack and not args.target:
        raise EftclipError("--attack needs --target LABEL (the class the backdoor aims at)")
    if args.batch_size < 1:
        raise EftclipError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.workers < 0:
        raise EftclipError(f"--workers must be 0 or more, not {args.workers}")
    check_count(args.max_per_class, "--max-per-class")
    # before any work: the report must not land on an input, and must be writable at all
    check_io({"--checkpoint": args.checkpoint, "--data": args.data, "--classes": args.classes,
              "--templates": args.templates}, {"--out": args.out})
    if args.out:
        check_output_file(args.out, "--out")
    check_device(args.device)

    resolve_clip_weights(checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained)  # fail fast
    dataset = ImageFolderSet(args.data, args.classes, max_per_class=args.max_per_class)
    template_spec = args.templates or ("cifar10" if args.classes == "cifar10" else "openai")
    templates = load_templates(template_spec)
    trigger = None
    if args.attack:
        from eftclip.attacks import create_trigger

        trigger = create_trigger(args.attack, **parse_attack_params(args.attack_params))
    if args.target is not None:
        # fail on a bad target before the model is loaded
        from eftclip.evaluation import resolve_target

        resolve_target(args.target, dataset.classnames, dataset.classes)

    bundle = load_clip(checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained, device=args.device)
    metrics = evaluate(
        bundle,
        dataset,
        templates=templates,
        trigger=trigger,
        target=args.target,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
        num_workers=args.workers,
        precision=args.precision,
    )
    print(f"checkpoint {bundle.pretrained or bundle.checkpoint}  ({bundle.name})")
    print(format_table(metrics))
    if args.out:
        config = {
            "checkpoint": os.path.abspath(bundle.checkpoint) if bundle.checkpoint else None,
            "pretrained": bundle.pretrained,
            "model": bundle.name,
            "data": os.path.abspath(dataset.root),
            "classes": args.classes,
            "templates": template_spec,
            "n_templates": len(templates),
            "attack": None if trigger is None else {"name": args.attack, "params": trigger.params()},
            "target": args.target,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "device": args.device,
            "precision": args.precision,
            "max_per_class": args.max_per_class,
        }
        # paths relative to the JSON's folder: the file may be committed or moved with its inputs
        config = portable_paths(config, Path(args.out).resolve().parent)
        write_json(Path(args.out), {"config": config, "metrics": metrics})
        print(f"wrote {args.out}")
    return 0
