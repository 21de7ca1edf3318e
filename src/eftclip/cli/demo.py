"""``eftclip demo``: the whole defense on the built-in world, the ``demo`` preset of the pipeline."""

from __future__ import annotations

import argparse

from eftclip.cli.study import add_run_flags, command_line, print_plan, print_summary, run_flags


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run the whole defense on the built-in world (poison, train, detect, curate, repair, report)",
        description="Make the built-in world, poison it, pre-train a clean and a poisoned CLIP, detect the "
                    "trigger and affected labels with the world's oracle, curate, repair with EftCLIP and compare "
                    "with CleanCLIP. The 'demo' preset of `eftclip study` (src/eftclip/presets/demo.yaml; "
                    "--quick: demo-quick.yaml). Writes DIR/report.md and DIR/metrics.json. Run the same command "
                    "again to continue an interrupted demo.",
    )
    p.add_argument("--quick", action="store_true", help="small world and short training (CI; directions only)")
    p.add_argument("--attack", default=None, help="trigger: badnet (default), blended, wanet, trojannet, trojannn")
    p.add_argument("--attack-param", action="append", metavar="KEY=VALUE",
                   help="override a trigger parameter (repeatable), e.g. size=8 position=top-left")
    p.add_argument("--target", default=None, help="target category of the world (default: umbrella)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: 0)")
    p.add_argument("--poison-rate", type=float, default=None, help="share of training pairs poisoned")
    p.add_argument("--poison-scenes", default=None,
                   help="single: poison only scenes of one object (default); any: any scene")
    p.add_argument("--poison-captions", default=None,
                   help="world: poisoned captions in the world's own style (default); generic: 'a photo of a <target>.'")
    add_run_flags(p)
    p.set_defaults(func=run, out="runs/demo")
    return p


def overrides(args: argparse.Namespace) -> dict:
    """The flags as dotted config keys (None = keep the preset's value)."""
    from eftclip.cli.values import parse_key_values

    attack = None
    if args.attack or args.attack_param:
        attack = [{"name": args.attack or "badnet", "params": parse_key_values(args.attack_param, "--attack-param")}]
    return {**run_flags(args), "attacks": attack, "target": args.target,
            "seeds": None if args.seed is None else [args.seed], "poison_rate": args.poison_rate,
            "source.poison_scenes": args.poison_scenes, "source.poison_captions": args.poison_captions}


def run(args: argparse.Namespace) -> int:
    from eftclip.pipeline.experiment import run_experiment
    from eftclip.pipeline.presets import load_experiment

    cfg = load_experiment("demo-quick" if args.quick else "demo", **overrides(args))
    metrics = run_experiment(cfg, resume=args.resume, force=args.force, plan_only=args.plan,
                             command=command_line(["demo"]))
    if args.plan:
        print_plan(metrics["plan"])
        return 0
    print_summary(metrics, cfg.out)
    return 0
