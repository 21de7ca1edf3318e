"""Training throughput and peak memory: ``eftclip train`` side by side with open_clip's trainer.

Usage::

    .venv/bin/python benchmarks/train_throughput.py [--model eftclip-tiny-vit] [--pairs 512]
        [--batch-size 64] [--epochs 3] [--threads 1] [--data CSV] [--image-size PX]
        [--device cpu|cuda] [--precision fp32|bf16] [--workers N] [--json FILE]
    .venv/bin/python benchmarks/train_throughput.py --make-data DIR --pairs N --image-size PX

Both sides train the same architecture on the same CSV with the same batch
size, epochs, lr, warm-up, device and precision, each in its own subprocess
(so peak memory is that process's max RSS, host memory).  Samples/s is the
steady-state rate: samples over time of the epochs after the first, so that
one-time set-up such as eftclip's image cache, CUDA start-up and cuDNN
autotuning is excluded (the end-to-end wall time includes it and is printed
too).  The reference's epochs are timed from its per-step log, without each
epoch's first step, which waits for the DataLoader workers it starts afresh
every epoch (see ``_open_clip_rates``).

The data are shape images with captions (``tests/training_fixtures.py``),
made at ``--image-size`` px (default: the model's input size): drawn at 32 px,
and at any other size scaled up with a little noise and saved as JPEG (as
photos are) so that decoding them costs what decoding a photo of that size does.
``--make-data DIR`` only makes them (``DIR/pairs.csv``), for several runs on one set.

The reference is open_clip's own trainer (``open_clip_train.main``, shipped
inside the ``open_clip_torch`` wheel; it needs the ``bench`` extra: pandas,
braceexpand, webdataset), run with ``--workers N --device D --precision P``
(``fp32``, or ``amp_bf16`` for ``--precision bf16``: bfloat16 autocast, as
eftclip's bf16) and the same torch thread count.
When it cannot be imported the reference is a plain loop in open_clip's
style, written here: a torch ``DataLoader`` that opens and
transforms every image with open_clip's ``preprocess_train`` at every step,
open_clip's ``ClipLoss``, ``torch.optim.AdamW`` (default implementation) and
the same cosine schedule.  The printed table (and the JSON) say which reference ran.
Nothing is asserted; the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from bench_common import command_line  # noqa: E402


def make_data(folder: Path, n: int, size: int = 32) -> Path:
    """n shape images of ``size`` px and a CSV with image,caption (and filepath,title for open_clip)."""
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
        if size == img.shape[0]:
            path = folder / "img" / f"{i:05d}.png"
            Image.fromarray(img).save(path)
        else:  # a photo-sized JPEG: scaled up, with noise so that it does not compress to nothing
            big = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), dtype=np.float32)
            big = np.clip(big + rng.normal(0.0, 6.0, big.shape), 0, 255).astype(np.uint8)
            path = folder / "img" / f"{i:05d}.jpg"
            Image.fromarray(big).save(path, quality=90)
        rows.append({"image": str(path), "caption": f"a photo of a {cname} {shape}", "filepath": str(path),
                     "title": f"a photo of a {cname} {shape}"})
    out = folder / "pairs.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "caption", "filepath", "title"])
        w.writeheader()
        w.writerows(rows)
    return out


def model_image_size(name: str) -> int:
    """The input side of open_clip architecture ``name`` (project configs included)."""
    from eftclip.models import model_config

    size = model_config(name)["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# what open_clip_train.data imports beyond torch and open_clip (the "bench" extra)
OPEN_CLIP_TRAIN_NEEDS = ("open_clip_train", "pandas", "braceexpand", "webdataset")


def open_clip_train_missing() -> list[str]:
    """The modules open_clip's trainer needs that cannot be found here (empty: it can run)."""
    return [m for m in OPEN_CLIP_TRAIN_NEEDS if importlib.util.find_spec(m) is None]


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
    import contextlib

    import torch
    from open_clip.loss import ClipLoss
    from PIL import Image

    import eftclip.models  # registers the project's tiny configs
    from eftclip.training.schedule import cosine_lr_at

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bundle = eftclip.models.create_model(args.model, device=device)
    model, pre, tok = bundle.model.train(), bundle.preprocess_train, bundle.tokenizer
    with open(args.data, newline="") as fh:
        rows = list(csv.DictReader(fh))

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return pre(Image.open(rows[i]["filepath"]).convert("RGB")), tok([rows[i]["title"]])[0]

    loader = torch.utils.data.DataLoader(DS(), batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    loss_fn = ClipLoss()

    def autocast():
        if args.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    steps = len(loader) * args.epochs
    rates = []  # per step, data wait included, as open_clip_train logs them
    step = 0
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        for images, texts in loader:
            images, texts = images.to(device, non_blocking=True), texts.to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = cosine_lr_at(step, base_lr=args.lr, warmup=args.warmup, total_steps=steps)
            with autocast():
                img_f, txt_f, scale = model(images, texts)
                loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            loss.item()  # one host sync per step, as both trainers log the loss every step
            step += 1
            t1 = time.perf_counter()
            rates.append(images.shape[0] / (t1 - t0))
            t0 = t1
    print(json.dumps({"steps": rates}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="eftclip-tiny-vit")
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads on both sides")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers on both sides (eftclip uses them only when it does not cache images)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N, on both sides")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: bfloat16 autocast on both sides (open_clip_train --precision amp_bf16); needs cuda")
    p.add_argument("--image-size", type=int, default=None, help="side of the images made (default: the model's input)")
    p.add_argument("--data", help="an existing CSV with image,caption,filepath,title columns")
    p.add_argument("--make-data", metavar="DIR", help="only make --pairs pairs at --image-size in DIR, then stop")
    p.add_argument("--reference", default="auto", choices=("auto", "open_clip_train", "loop"),
                   help="auto: open_clip_train when it can be imported, else the loop written here")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--_baseline", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._baseline:
        baseline_loop(args)
        return
    if args.make_data:
        size = args.image_size or model_image_size(args.model)
        print(make_data(Path(args.make_data), args.pairs, size))
        return
    if args.precision == "bf16" and not args.device.startswith("cuda"):
        p.error("--precision bf16 needs --device cuda (eftclip trains in fp32 on a CPU)")
    missing = open_clip_train_missing()
    if args.reference == "open_clip_train" and missing:
        p.error(f"--reference open_clip_train: cannot import {', '.join(missing)} (pip install eftclip[bench])")
    use_open_clip_train = args.reference == "open_clip_train" or (args.reference == "auto" and not missing)

    ref_name = "open_clip_train.main" if use_open_clip_train else (
        "open_clip-style loop" + (f" (open_clip_train cannot import {', '.join(missing)})" if missing else ""))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    nan = float("nan")
    with tempfile.TemporaryDirectory(prefix="eftclip-bench-") as tmp:
        tmp = Path(tmp)
        size = args.image_size or model_image_size(args.model)
        data = Path(args.data) if args.data else make_data(tmp / "data", args.pairs, size)
        with open(data, newline="") as fh:
            n_pairs = sum(1 for _ in csv.DictReader(fh))

        def write_json(eftclip: dict, reference: dict) -> None:
            if not args.json:
                return
            from importlib import metadata

            result = {
                "benchmark": "train_throughput",
                "command": command_line(),
                "model": args.model, "image_size": size, "pairs": n_pairs, "batch_size": args.batch_size,
                "epochs": args.epochs, "device": args.device, "precision": args.precision, "threads": args.threads,
                "workers": args.workers, "torch": metadata.version("torch"), "python": platform.python_version(),
                "eftclip": eftclip, "reference": reference,
                "ratio": eftclip["samples_per_s"] / reference["samples_per_s"],
                "complete": reference["samples_per_s"] == reference["samples_per_s"],  # not NaN: both sides ran
            }
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

        common = ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                  "--warmup", str(args.warmup), "--workers", str(args.workers)]
        wall_e, mem_e, _ = run_measured(
            [sys.executable, "-m", "eftclip", "train", "--data", str(data), "--model", args.model, "--out",
             str(tmp / "eftclip"), "--no-progress", "--device", args.device, "--precision", args.precision,
             "--cpu-threads", str(args.threads), *common],
            env,
        )
        with open(tmp / "eftclip" / "summary.csv", newline="") as fh:
            rates_e = [float(r["samples_per_s"]) for r in csv.DictReader(fh)]
        steady_e = _steady(rates_e)
        eftclip = {"samples_per_s": steady_e, "epoch_rates": rates_e, "wall_s": wall_e, "peak_rss_mib": mem_e}
        # written now so that a time limit reached by the reference still leaves eftclip's figure
        write_json(eftclip, {"name": ref_name, "samples_per_s": nan})

        if use_open_clip_train:
            # eftclip.models is imported first so that open_clip knows the project's tiny configs
            launcher = "import sys, eftclip.models; from open_clip_train.main import main; main(sys.argv[1:])"
            wall_r, mem_r, _ = run_measured(
                [sys.executable, "-c", launcher, "--train-data", str(data), "--csv-img-key", "filepath",
                 "--csv-caption-key", "title", "--csv-separator", ",", "--model", args.model,
                 "--logs", str(tmp / "oc"), "--name", "bench", "--save-frequency", "0",
                 "--report-to", "", "--dataset-type", "csv", "--device", args.device,
                 "--precision", {"fp32": "fp32", "bf16": "amp_bf16"}[args.precision],
                 "--log-every-n-steps", "1", "--seed", "0", *common],
                env,
            )
            rates_r, steady_r = _open_clip_rates(_open_clip_steps(tmp / "oc" / "bench"), args.epochs)
        else:
            wall_r, mem_r, out = run_measured(
                [sys.executable, str(HERE), "--_baseline", "--data", str(data), "--model", args.model,
                 "--threads", str(args.threads), "--device", args.device, "--precision", args.precision, *common],
                env,
            )
            steps_r = json.loads(out.strip().splitlines()[-1])["steps"]
            rates_r, steady_r = _open_clip_rates(steps_r, args.epochs)
        write_json(eftclip, {"name": ref_name, "samples_per_s": steady_r, "epoch_rates": rates_r, "wall_s": wall_r,
                             "peak_rss_mib": mem_r})

    ratio = steady_e / steady_r
    print(f"model {args.model} at {size} px, {n_pairs} pairs, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.device} {args.precision}, {args.threads} thread(s), {args.workers} workers")
    print("| trainer | samples/s (steady) | wall s | peak RSS MiB |")
    print("| --- | --- | --- | --- |")
    print(f"| eftclip train | {steady_e:.1f} | {wall_e:.1f} | {mem_e:.0f} |")
    print(f"| {ref_name} | {steady_r:.1f} | {wall_r:.1f} | {mem_r:.0f} |")
    print(f"throughput ratio eftclip/reference: {ratio:.2f} (goal on a GPU: >= 1.2); "
          f"peak memory ratio: {mem_e / mem_r:.2f}")


def _steady(rates: list[float]) -> float:
    """Samples over time of the epochs after the first (equal epochs: the harmonic mean of their rates)."""
    tail = [r for r in (rates[1:] or rates)]
    if not tail or any(not r > 0 for r in tail):
        return float("nan")
    return len(tail) / sum(1.0 / r for r in tail)


def _open_clip_steps(run: Path) -> list[float]:
    """The per-step samples/s open_clip_train logged, in order (one line per step at --log-every-n-steps 1).

    Each is ``batch / that step's time``, data wait included ("... Batch (t): ..., N/s, M/s/gpu").
    """
    rates = []
    log = run / "out.log"
    if log.exists():
        for line in log.read_text().splitlines():
            if "/s/gpu" in line:
                try:
                    rates.append(float(line.split("/s/gpu")[0].split(",")[-1].strip().split("/s")[0]))
                except ValueError:
                    pass
    return [r for r in rates if r > 0]


def _open_clip_rates(steps: list[float], epochs: int) -> tuple[list[float], float]:
    """(per-epoch rates, steady rate) from open_clip_train's per-step rates.

    An epoch's rate is its samples over its summed step times.  The steady rate
    leaves out the first epoch (as eftclip's) and the first step of every later
    epoch: open_clip_train starts its DataLoader workers afresh each epoch (no
    persistent workers), a wait that a real, long epoch amortises but a short
    benchmark epoch would charge to every step.  Without the first step a run of
    equal steps has the same rate, so nothing else is favoured.
    """
    if not steps:
        return [float("nan")], float("nan")
    per_epoch = max(1, len(steps) // max(1, epochs))
    chunks = [steps[i:i + per_epoch] for i in range(0, len(steps), per_epoch)]
    epoch_rates = [len(c) / sum(1.0 / r for r in c) for c in chunks]
    later = chunks[1:] or chunks
    kept = [r for c in later for r in (c[1:] or c)]
    return epoch_rates, len(kept) / sum(1.0 / r for r in kept)


if __name__ == "__main__":
    main()
