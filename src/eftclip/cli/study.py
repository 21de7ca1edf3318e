"""``eftclip study``: any experiment preset or YAML (see :mod:`eftclip.pipeline.experiment`)."""

from __future__ import annotations

import argparse


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags every experiment verb shares (where it writes, how it runs)."""
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: the config's 'out')")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="stage cache, shareable between experiments (default: the config's 'cache', else DIR/cache)")
    p.add_argument("--device", default=None, help="torch device: auto, cpu, cuda (default: the config's)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for independent stages (default: the config's; 1 = one after another)")
    p.add_argument("--train-procs", type=int, default=None, metavar="N",
                   help="processes per pre-training / fine-tuning stage: N > 1 runs each as one torchrun job "
                        "(one process per GPU), the recipe's batch split over them (default: the config's, 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--plan", action="store_true",
                   help="print each stage with its inputs and cache folder as JSON lines, and run nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue a run in DIR made with other settings (finished stages are kept)")
    p.add_argument("--force", action="store_true",
                   help="delete DIR's contents (only a folder eftclip made) and start over; the cache is kept "
                        "unless it lies inside DIR")


def run_flags(args: argparse.Namespace) -> dict:
    return {"out": args.out, "cache": args.cache, "device": args.device, "workers": args.workers,
            "train_procs": args.train_procs, "progress": False if args.no_progress else None}


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "study",
        help="run an experiment from a preset or YAML: a matrix of attacks x seeds, every defense, statistics",
        description="Run every cell of the config's matrix (attacks x seeds x targets): poison, pre-train, detect, "
                    "curate, fine-tune every defense, evaluate; then the means with 95%% intervals and the paired "
                    "differences between defenses. Writes report.md, metrics.json, summary.json, tables and "
                    "figures in DIR. Run the same command again to continue; finished stages in the cache are "
                    "reused by every experiment that shares them.",
    )
    p.add_argument("--config", required=True, metavar="FILE|PRESET",
                   help="experiment YAML, or a shipped preset: demo, demo-quick, world-matrix, cifar10")
    add_run_flags(p)
    p.set_defaults(func=run)
    return p


def command_line(argv_head: list[str]) -> str:
    import shlex
    import sys

    args = sys.argv[1:] if sys.argv[1:2] == argv_head[:1] else argv_head
    return "eftclip " + " ".join(shlex.quote(a) for a in args)


def print_plan(plan: list[dict]) -> None:
    import json

    for stage in plan:
        print(json.dumps(stage, sort_keys=True))


def print_summary(metrics: dict, out: str) -> None:
    for m in metrics["cells"]:
        d = m["detection"]
        print(f"{m['cell']:<24} clean CA {m['clean']['ca']:.3f} | poisoned CA {m['poisoned']['ca']:.3f} "
              f"ASR {m['poisoned']['asr']:.3f} | K={d['triggers']} rate={d['detection_rate']}")
        for name, e in m["defenses"].items():
            print(f"{'':<24} {name:<18} CA {e['ca']:.3f}  ASR {e['asr']:.3f}  ({e['finetune_pairs']} pairs)")
    wall = metrics["wall_seconds"]
    wall_text = "stages reused from the cache" if wall is None else f"{wall:.0f}s wall"
    print(f"report: {out}/report.md  ({wall_text}, {metrics['compute_seconds']:.0f}s of stage compute)")


def run(args: argparse.Namespace) -> int:
    from eftclip.pipeline.experiment import run_experiment
    from eftclip.pipeline.presets import load_experiment

    cfg = load_experiment(args.config, **run_flags(args))
    metrics = run_experiment(cfg, resume=args.resume, force=args.force, plan_only=args.plan,
                             command=command_line(["study", "--config", args.config]))
    if args.plan:
        print_plan(metrics["plan"])
        return 0
    print_summary(metrics, cfg.out)
    return 0
