"""``eftclip demo``: the whole defense on the built-in world (see :mod:`eftclip.pipeline.demo`)."""

from __future__ import annotations

import argparse
import json


def _params(items: list[str] | None) -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            from eftclip.errors import EftclipError

            raise EftclipError(f"--attack-param: expected KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run the whole defense on the built-in world (poison, train, detect, curate, repair, report)",
        description="Make the built-in world, poison it, pre-train a clean and a poisoned CLIP, detect the "
                    "trigger and affected labels with the world's oracle, curate a compact fine-tuning set, "
                    "repair with EftCLIP and compare with CleanCLIP. Writes DIR/report.md and DIR/metrics.json. "
                    "Run the same command again to continue an interrupted demo.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--attack", default=None, help="trigger: badnet (default), blended, wanet, trojannet, trojannn")
    p.add_argument("--attack-param", action="append", metavar="KEY=VALUE",
                   help="override a trigger parameter (repeatable), e.g. size=8 position=top-left")
    p.add_argument("--target", default=None, help="target category of the world (default: umbrella)")
    p.add_argument("--seed", type=int, default=None, help="base seed (default: 0)")
    p.add_argument("--poison-rate", type=float, default=None, help="share of training pairs poisoned")
    p.add_argument("--poison-scenes", choices=("single", "any"), default=None,
                   help="poison only scenes of one object (default) or any scene")
    p.add_argument("--poison-captions", choices=("world", "generic"), default=None,
                   help="poisoned captions in the world's own style (default) or generic 'a photo of a <target>.'")
    p.add_argument("--quick", action="store_true", help="small world and short training (CI; directions only)")
    p.add_argument("--device", default=None, help="torch device: auto (default), cpu, cuda")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for independent stages: the two pre-trainings, the fine-tunes (default 2; "
                        "1 = one after another)")
    p.add_argument("--resume", action="store_true",
                   help="continue a demo in DIR made with other settings (finished stages are kept)")
    p.add_argument("--force", action="store_true", help="delete DIR's contents and start over")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from eftclip.pipeline.demo import config_from_flags, run_demo

    cfg = config_from_flags(
        quick=args.quick, out=args.out, attack=args.attack, target=args.target, seed=args.seed,
        poison_rate=args.poison_rate, poison_captions=args.poison_captions,
        poison_scenes=args.poison_scenes, workers=args.workers, device=args.device,
        attack_params=_params(args.attack_param) if args.attack_param else None,
    )
    metrics = run_demo(cfg, resume=args.resume, force=args.force)
    d = metrics["detection"]
    print(f"clean    CA {metrics['clean']['ca']:.3f}  ASR {metrics['clean']['asr']:.3f}")
    print(f"poisoned CA {metrics['poisoned']['ca']:.3f}  ASR {metrics['poisoned']['asr']:.3f}")
    print(f"detection: K={d['triggers']} target found={d['target_found']} "
          f"rate={d['detection_rate']} precision={d['precision']} FPR={d['false_positive_rate']}")
    for name, m in metrics["defenses"].items():
        print(f"{name:<16} CA {m['ca']:.3f}  ASR {m['asr']:.3f}  ({m['finetune_pairs']} pairs, {m['seconds']:.0f}s)")
    print(f"report: {args.out}/report.md  ({metrics['seconds']:.0f}s)")
    return 0
