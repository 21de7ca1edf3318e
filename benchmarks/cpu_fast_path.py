"""CPU fast paths, each against fp32 in one run: bf16 autocast, channels_last, torch.compile.

    python benchmarks/cpu_fast_path.py [--models eftclip-world-rn eftclip-tiny-vit] [--pairs 2048]
        [--epochs 3] [--batch-size 128] [--threads 1] [--procs 1] [--json FILE]

Part 1, the real training loop: ``eftclip train`` on the same made pairs for each
variant (fp32; bf16 where the CPU has native bf16; channels_last; both), each in
its own subprocess with ``--cpu-threads``, ``--procs`` of them at once (the demo
trains two side by side); the steady rate is one process's samples/s over the
epochs after the first, as ``summary.csv`` logs them (data feed included).

Part 2, ``torch.compile``, which the loop does not offer: one synthetic
contrastive step (forward, backward, AdamW) on random tensors, eager against
compiled, with the seconds the compilation itself took. It pays only where a
run's steps times the saving exceed that.

Prints markdown tables with the CPU model and flags; never asserts a timing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from train_throughput import make_data, model_image_size  # noqa: E402

# (name, extra `eftclip train` flags, needs native bf16)
VARIANTS = (
    ("fp32", ["--precision", "fp32"], False),
    ("bf16", ["--precision", "bf16"], True),
    ("fp32 + channels_last", ["--precision", "fp32", "--channels-last"], False),
    ("bf16 + channels_last", ["--precision", "bf16", "--channels-last"], True),
)


def loop_rate(data: Path, model: str, flags: list[str], args: argparse.Namespace, out: Path) -> dict:
    """Run ``eftclip train`` in ``args.procs`` processes at once (as the demo runs its two pre-trainings);
    return the steady samples/s of one process (their mean), the wall seconds and the last loss."""
    cmd = [sys.executable, "-m", "eftclip", "train", "--data", str(data), "--model", model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", "1e-3", "--warmup", "10",
           "--cpu-threads", str(args.threads), "--no-progress", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    logs = [open(out / f"p{i}.log", "w") for i in range(args.procs)]  # files: a full pipe would stall a process
    procs = [subprocess.Popen([*cmd, "--out", str(out / f"p{i}")], stdout=subprocess.DEVNULL, stderr=log, env=env)
             for i, log in enumerate(logs)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    for i, (code, log) in enumerate(zip(codes, logs)):
        log.close()
        if code != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{(out / f'p{i}.log').read_text()[-3000:]}")
    rates, loss = [], None
    for i in range(args.procs):
        with open(out / f"p{i}" / "summary.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        epochs = [float(r["samples_per_s"]) for r in rows[1:] or rows]
        rates.append(len(epochs) / sum(1.0 / r for r in epochs))
        loss = float(rows[-1]["loss"])
    return {"samples_per_s": sum(rates) / len(rates), "wall_s": wall, "loss": loss}


def compiled_step_rate(model_name: str, batch: int, threads: int, compile_it: bool, steps: int = 12) -> dict:
    """Samples/s of a synthetic contrastive step, eager or compiled, and the seconds of the first 3 steps."""
    import torch
    import torch.nn.functional as F

    from eftclip.models import create_model

    torch.set_num_threads(threads)
    bundle = create_model(model_name, seed=0)
    model = bundle.model.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, bundle.image_size, bundle.image_size, generator=gen)
    t = torch.randint(0, 1000, (batch, bundle.context_length), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def logits(x, t):
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(t), dim=-1)
        return 20.0 * img @ txt.T

    fn = torch.compile(logits) if compile_it else logits
    labels = torch.arange(batch)

    def step():
        loss = F.cross_entropy(fn(x, t), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"samples_per_s": steps * batch / (time.perf_counter() - t0), "first_3_steps_s": first}


def _compile_child(args: argparse.Namespace) -> None:
    print(json.dumps(compiled_step_rate(args.child_model, args.batch_size, args.threads, args.child_compile)))


def compile_rows(models: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    for model in models:
        for compile_it in (False, True):
            cmd = [sys.executable, str(HERE), "--child-model", model, "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads)] + (["--child-compile"] if compile_it else [])
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if proc.returncode != 0:
                rows.append({"model": model, "variant": "compile" if compile_it else "eager",
                             "error": proc.stderr.strip().splitlines()[-1][:200]})
                continue
            rows.append({"model": model, "variant": "compile" if compile_it else "eager",
                         **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["eftclip-world-rn", "eftclip-tiny-vit"])
    p.add_argument("--pairs", type=int, default=2048, help="made pairs the loop trains on")
    p.add_argument("--epochs", type=int, default=3, help="epochs per loop run (the first is left out of the rate)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of every run")
    p.add_argument("--procs", type=int, default=1,
                   help="training processes run at once per variant (the demo runs 2 pre-trainings side by side)")
    p.add_argument("--no-compile", action="store_true", help="skip part 2 (torch.compile)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-compile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_model:
        return _compile_child(args)

    from eftclip.pipeline.machine import machine_info
    from eftclip.precision import cpu_has_bf16

    machine = machine_info()
    flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in machine["cpu_flags"]]
    print(f"CPU: {machine['cpu']}, {machine['nproc']} cores, flags {', '.join(flags) or 'none of avx512/amx'}; "
          f"{args.threads} thread(s) x {args.procs} process(es) at once, batch {args.batch_size}; "
          f"torch {machine['torch']}")
    loop = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model in args.models:
            data = make_data(tmp / f"data-{model}", args.pairs, model_image_size(model))
            for i, (name, extra, needs_bf16) in enumerate(VARIANTS):
                if needs_bf16 and not cpu_has_bf16():
                    continue
                r = loop_rate(data, model, extra, args, tmp / f"run-{model}-{i}")
                loop.append({"model": model, "variant": name, **r})
    print("\n**The training loop (`eftclip train`), steady samples/s of one process**\n")
    print("| model | variant | samples/s | x fp32 | wall s | last loss |\n|---|---|---|---|---|---|")
    for r in loop:
        base = next(b for b in loop if b["model"] == r["model"] and b["variant"] == "fp32")
        print(f"| {r['model']} | {r['variant']} | {r['samples_per_s']:.0f} | "
              f"{r['samples_per_s'] / base['samples_per_s']:.2f} | {r['wall_s']:.1f} | {r['loss']:.4f} |")
    compiled = [] if args.no_compile else compile_rows(args.models, args)
    if compiled:
        print("\n**torch.compile, one synthetic step (forward, backward, AdamW)**\n")
        print("| model | variant | samples/s | first 3 steps s |\n|---|---|---|---|")
        for r in compiled:
            if "error" in r:
                print(f"| {r['model']} | {r['variant']} | failed: {r['error']} | |")
            else:
                print(f"| {r['model']} | {r['variant']} | {r['samples_per_s']:.0f} | {r['first_3_steps_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "command": " ".join(sys.argv), "args": vars(args),
                                               "loop": loop, "compile": compiled}, indent=2))


if __name__ == "__main__":
    main()
