"""``eftclip study``: the paper's tables on a labelled image folder (see :mod:`eftclip.pipeline.study`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "study",
        help="run a whole study from one YAML (clean and poisoned CLIPs per attack, detection, "
             "EftCLIP/CleanCLIP/RoCLIP, paper-shaped tables)",
        description="Split a labelled ImageFolder (e.g. CIFAR-10) into caption CSVs, pre-train a clean CLIP and "
                    "a poisoned CLIP per attack, detect the trigger with the reference oracle, curate the compact "
                    "fine-tuning set, repair with EftCLIP and compare with CleanCLIP and RoCLIP. Writes tables "
                    "(Markdown, CSV, JSON), figures, report.md and metrics.json in DIR. Run the same command again "
                    "to continue; finished stages in the cache are reused by every study that shares them.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="study YAML (see configs/cifar10.yaml)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: the YAML's 'out')")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="stage cache shared between studies (default: the YAML's 'cache', else DIR/cache)")
    p.add_argument("--device", default=None, help="torch device: auto, cpu, cuda (default: the YAML's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--resume", action="store_true",
                   help="continue a study in DIR made with other settings (finished stages are kept)")
    p.add_argument("--force", action="store_true", help="delete DIR's contents and start over (the cache is kept "
                                                        "unless it lies inside DIR)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from eftclip.pipeline.study import load_config, run_study

    cfg = load_config(args.config, out=args.out, cache=args.cache, device=args.device,
                      progress=False if args.no_progress else None)
    import shlex
    import sys

    command = "eftclip " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if sys.argv[1:2] == ["study"] else
                                                              ["study", "--config", args.config]))
    metrics = run_study(cfg, resume=args.resume, force=args.force, command=command)
    for m in metrics["attacks"]:
        e, c = m["defenses"]["eftclip"], m["defenses"]["cleanclip"]
        print(f"{m['attack']['name']:<10} poisoned CA {m['poisoned']['ca']:.3f} ASR {m['poisoned']['asr']:.3f} | "
              f"EftCLIP CA {e['ca']:.3f} ASR {e['asr']:.3f} | CleanCLIP CA {c['ca']:.3f} ASR {c['asr']:.3f} "
              f"({e['finetune_pairs']} pairs)")
    if metrics.get("roclip"):
        r = metrics["roclip"]["roclip"]
        print(f"RoCLIP ({metrics['roclip']['attack']}): CA {r['ca']:.3f} ASR {r['asr']:.3f}")
    print(f"report: {cfg.out}/report.md  ({metrics['seconds']:.0f}s of stage compute)")
    return 0
