"""Training throughput and peak memory: ``eftclip train`` side by side with open_clip's trainer.

Usage::

    .venv/bin/python benchmarks/train_throughput.py [--model eftclip-tiny-vit] [--pairs 512]
        [--batch-size 64] [--epochs 3] [--threads 1] [--data CSV]

Both sides train the same architecture on the same CSV with the same batch
size, epochs, lr and warm-up, each in its own subprocess (so peak memory is
that process's max RSS).  Samples/s is the steady-state rate (epochs after the
first, so one-time set-up such as eftclip's image cache is excluded; the
end-to-end wall time includes it and is printed too).

The reference is open_clip's own trainer (``open_clip_train.main``, shipped
inside the ``open_clip_torch`` wheel; it needs ``pandas``), run with
``--precision fp32 --workers 0 --device cpu`` and the same torch thread count.
When it cannot be imported the reference is a plain loop in open_clip's
style, written here: a torch ``DataLoader`` that opens and
transforms every image with open_clip's ``preprocess_train`` at every step,
open_clip's ``ClipLoss``, ``torch.optim.AdamW`` (default implementation) and
the same cosine schedule.  The printed table says which reference ran.
Nothing is asserted; the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def make_data(folder: Path, n: int) -> Path:
    """n 32x32 shape images and a CSV with image,caption (and filepath,title for open_clip)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from training_fixtures import COLORS, SHAPES, BACKGROUNDS, draw

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        cname = list(COLORS)[int(rng.integers(len(COLORS)))]
        img = draw(shape, COLORS[cname], BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], rng)
        path = folder / "img" / f"{i:05d}.png"
        Image.fromarray(img).save(path)
        rows.append({"image": str(path), "caption": f"a photo of a {cname} {shape}", "filepath": str(path),
                     "title": f"a photo of a {cname} {shape}"})
    out = folder / "pairs.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "caption", "filepath", "title"])
        w.writeheader()
        w.writerows(rows)
    return out


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS MiB of the child, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read()
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0, out


def baseline_loop(args: argparse.Namespace) -> None:
    """The reference loop (subprocess mode): open_clip's recipe with per-step decoding."""
    import torch
    from open_clip.loss import ClipLoss
    from PIL import Image

    import eftclip.models  # registers the project's tiny configs
    from eftclip.training.schedule import cosine_lr_at

    torch.set_num_threads(args.threads)
    bundle = eftclip.models.create_model(args.model)
    model, pre, tok = bundle.model.train(), bundle.preprocess_train, bundle.tokenizer
    with open(args.data, newline="") as fh:
        rows = list(csv.DictReader(fh))

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return pre(Image.open(rows[i]["filepath"]).convert("RGB")), tok([rows[i]["title"]])[0]

    loader = torch.utils.data.DataLoader(DS(), batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    loss_fn = ClipLoss()
    steps = len(loader) * args.epochs
    rates = []
    step = 0
    for _ in range(args.epochs):
        t0, n = time.perf_counter(), 0
        for images, texts in loader:
            for g in opt.param_groups:
                g["lr"] = cosine_lr_at(step, base_lr=args.lr, warmup=args.warmup, total_steps=steps)
            img_f, txt_f, scale = model(images, texts)
            loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            n += images.shape[0]
        rates.append(n / (time.perf_counter() - t0))
    print(json.dumps({"rates": rates}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="eftclip-tiny-vit")
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads on both sides")
    p.add_argument("--workers", type=int, default=0, help="open_clip_train DataLoader workers")
    p.add_argument("--data", help="an existing CSV with image,caption,filepath,title columns")
    p.add_argument("--_baseline", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._baseline:
        baseline_loop(args)
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory(prefix="eftclip-bench-") as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else make_data(tmp / "data", args.pairs)
        common = ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                  "--warmup", str(args.warmup)]
        wall_e, mem_e, _ = run_measured(
            [sys.executable, "-m", "eftclip", "train", "--data", str(data), "--model", args.model, "--out",
             str(tmp / "eftclip"), "--no-progress", "--device", "cpu", "--cpu-threads", str(args.threads), *common],
            env,
        )
        with open(tmp / "eftclip" / "summary.csv", newline="") as fh:
            rates_e = [float(r["samples_per_s"]) for r in csv.DictReader(fh)]

        if importlib.util.find_spec("open_clip_train") is not None:
            ref_name = "open_clip_train.main"
            # eftclip.models is imported first so that open_clip knows the project's tiny configs
            launcher = "import sys, eftclip.models; from open_clip_train.main import main; main(sys.argv[1:])"
            wall_r, mem_r, _ = run_measured(
                [sys.executable, "-c", launcher, "--train-data", str(data), "--csv-img-key", "filepath",
                 "--csv-caption-key", "title", "--csv-separator", ",", "--model", args.model, "--workers",
                 str(args.workers), "--logs", str(tmp / "oc"), "--name", "bench", "--save-frequency", "0",
                 "--report-to", "", "--dataset-type", "csv", "--device", "cpu", "--precision", "fp32",
                 "--log-every-n-steps", "1", "--seed", "0", *common],
                env,
            )
            rates_r = _open_clip_rates(tmp / "oc" / "bench", args.epochs)
        else:
            ref_name = "open_clip-style loop (open_clip_train not installed)"
            wall_r, mem_r, out = run_measured(
                [sys.executable, str(HERE), "--_baseline", "--data", str(data), "--model", args.model,
                 "--threads", str(args.threads), *common],
                env,
            )
            rates_r = json.loads(out.strip().splitlines()[-1])["rates"]

    steady_e = _steady(rates_e)
    steady_r = _steady(rates_r)
    print(f"model {args.model}, {args.pairs if not args.data else 'given'} pairs, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.threads} thread(s)")
    print(f"| trainer | samples/s (steady) | wall s | peak RSS MiB |")
    print(f"| --- | --- | --- | --- |")
    print(f"| eftclip train | {steady_e:.1f} | {wall_e:.1f} | {mem_e:.0f} |")
    print(f"| {ref_name} | {steady_r:.1f} | {wall_r:.1f} | {mem_r:.0f} |")
    print(f"throughput ratio eftclip/reference: {steady_e / steady_r:.2f} (goal >= 1.0); "
          f"peak memory ratio: {mem_e / mem_r:.2f}")


def _steady(rates: list[float]) -> float:
    tail = rates[1:] or rates
    return sum(tail) / len(tail)


def _open_clip_rates(run: Path, epochs: int) -> list[float]:
    # open_clip_train logs "... Data (t): ... Batch (t): ..., N/s, M/s/gpu" lines to out.log, one per
    # step here; its first epoch is dropped like eftclip's (warm-up of allocators and caches)
    rates = []
    log = run / "out.log"
    if log.exists():
        for line in log.read_text().splitlines():
            if "/s/gpu" in line:
                try:
                    rates.append(float(line.split("/s/gpu")[0].split(",")[-1].strip().split("/s")[0]))
                except ValueError:
                    pass
    if not rates:
        return [float("nan")]
    per_epoch = max(1, len(rates) // max(1, epochs))
    return [sum(rates[:per_epoch]) / per_epoch] + rates[per_epoch:]



if __name__ == "__main__":
    main()
