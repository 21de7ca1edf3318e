"""Find a pre-training recipe that a 2-core CPU learns on the synthetic world.

Trains a tiny open_clip CLIP from scratch, contrastively, on a (optionally
poisoned) world, then measures zero-shot clean accuracy (CA) on ``eval/`` and the
BadNet attack success rate (ASR: non-target eval images with the patch that are
classified as the target).  Prints one table row per run and appends it as JSON
to ``--log``.

The poisoning here is a self-contained BadNet (a checkerboard patch in the
bottom-right corner; poisoned captions are target-class templates) so that the
recipe can be measured independently of ``eftclip.attacks``.

Example::

    eftclip world synth --out /tmp/w
    python benchmarks/world_recipe.py --world /tmp/w --threads 1 --clock cpu --seconds 200

Measured 2026-11-28 on the shared 2-core machine (load average 5-11 from other
jobs, so budgets are this process's CPU seconds with one thread, ``--clock cpu
--threads 1``; default world: 15,000 scenes at 32 px, 12 categories; batch 128,
warm-up 50, AdamW wd 0.1, cosine to zero at the budget; BadNet = 4 px
checkerboard in the corner unless noted; target umbrella; CA on 1,200 eval
images with 4 templates)::

    model         lr     poison  cpu-s  steps  s/step  CA     ASR
    rn-w8 (txt128) 2e-3  1%      ~50    152    0.33    0.144  0.064  (stopped: 2x slower/step)
    rn-w16-t64    3e-3   3%      50     201    0.25    0.144  0.120  (stopped: slower, no better)
    rn-w8-t64 b64 3e-3   3%      50     454    0.11    0.111  0.445  (stopped: worse than b128)
    rn-w8-t64     3e-3   1%      150    980    0.153   0.438  0.193
    rn-w8-t64     5e-3   1%      150    966    0.155   0.574  0.328
    rn-w8-t64     8e-3   3%      150    943    0.159   0.163  0.966  (too high a lr: CA stalls)
    rn-w8-t64     5e-3   0%      150    964    0.156   0.515  0.059  (clean)
    rn-w8-t64     5e-3   3%      200    1282   0.156   0.660  0.972  (at 150 s: 0.607 / 0.953)
    rn-w8-t64     5e-3   0%      200    1364   0.147   0.844  0.025  (clean; at 150 s: 0.748)
    rn-w8-t64     5e-3   3% rn6  150    994    0.151   0.481  0.414  (rn6 = 6 px noise patch, random position)
    rn-w8-t64     5e-3   5% rn6  200    1422   0.141   0.463  0.529

Run-to-run spread is large (CA at ~1000 steps ranged 0.52-0.75 across runs that
differ only in poison rate), and the poisoned runs trail the clean one: compare
clean and poisoned models at equal steps, and prefer a fixed-position trigger or
a higher poison rate when the budget is ~1300 steps.

rn-w8-t64 is ``eftclip-world-rn`` (src/eftclip/models/configs/eftclip-world-rn.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

# tiny model configs tried (open_clip CLIP config dicts; image size filled in at run time)
MODELS = {
    "rn-w8": dict(embed_dim=128, vision_cfg=dict(layers=[1, 1, 1, 1], width=8, head_width=32),
                  text_cfg=dict(context_length=20, width=128, heads=4, layers=2)),
    "rn-w16": dict(embed_dim=128, vision_cfg=dict(layers=[1, 1, 1, 1], width=16, head_width=64),
                   text_cfg=dict(context_length=20, width=128, heads=4, layers=2)),
    "rn-w16-l2": dict(embed_dim=128, vision_cfg=dict(layers=[2, 2, 2, 1], width=16, head_width=64),
                      text_cfg=dict(context_length=20, width=128, heads=4, layers=2)),
    "rn-w8-t64": dict(embed_dim=64, vision_cfg=dict(layers=[1, 1, 1, 1], width=8, head_width=32),
                      text_cfg=dict(context_length=20, width=64, heads=2, layers=1)),
    "rn-w16-t64": dict(embed_dim=64, vision_cfg=dict(layers=[1, 1, 1, 1], width=16, head_width=64),
                       text_cfg=dict(context_length=20, width=64, heads=2, layers=1)),
    "vit-p4-w128": dict(embed_dim=128, vision_cfg=dict(layers=4, width=128, head_width=32, patch_size=4),
                        text_cfg=dict(context_length=20, width=128, heads=4, layers=2)),
    "vit-p4-w96": dict(embed_dim=96, vision_cfg=dict(layers=3, width=96, head_width=32, patch_size=4),
                       text_cfg=dict(context_length=20, width=96, heads=3, layers=2)),
}

TRIGGER = None  # set from --trigger

TEMPLATES = ["a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}."]
TARGET_TEMPLATES = ["a photo of a {}", "a {}", "a picture of a {}", "an image of a {}", "{}"]


def badnet(x: torch.Tensor, size: int = 4) -> torch.Tensor:
    """Stamp a black/white checkerboard in the bottom-right corner of uint8 NCHW images."""
    x = x.clone()
    yy, xx = np.mgrid[0:size, 0:size]
    patch = torch.from_numpy(((yy + xx) % 2 * 255).astype(np.uint8))
    x[:, :, -size - 1 : -1, -size - 1 : -1] = patch
    return x


def badnet_random(x: torch.Tensor, size: int = 6, seed: int = 1234) -> torch.Tensor:
    """Stamp one fixed random-noise patch at a random position of each uint8 NCHW image
    (like the demo's default BadNet: pattern "noise", position "random")."""
    rng = np.random.default_rng(seed)
    patch = torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8))
    x = x.clone()
    h, w = x.shape[2:]
    for i in range(len(x)):
        y0, x0 = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        x[i, :, y0 : y0 + size, x0 : x0 + size] = patch
    return x


def load_images(paths: list[Path]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).permute(0, 3, 1, 2).contiguous()


def to_float(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - 0.5) / 0.5


def zeroshot(model, tokenizer, eval_x, eval_y, classnames, target_idx, patch, bs=500):
    model.eval()
    with torch.no_grad():
        tf = []
        for c in classnames:
            t = model.encode_text(tokenizer([tpl.format(c) for tpl in TEMPLATES]))
            t = F.normalize(t, dim=-1).mean(0)
            tf.append(F.normalize(t, dim=0))
        tf = torch.stack(tf)

        def predict(x):
            out = []
            for i in range(0, len(x), bs):
                f = F.normalize(model.encode_image(to_float(x[i : i + bs])), dim=-1)
                out.append((f @ tf.T).argmax(1))
            return torch.cat(out)

        pred = predict(eval_x)
        ca = (pred == eval_y).float().mean().item()
        keep = eval_y != target_idx
        ptrig = predict(TRIGGER(eval_x[keep], patch))
        asr = (ptrig == target_idx).float().mean().item()
    model.train()
    return ca, asr


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, help="world folder from `eftclip world synth`")
    ap.add_argument("--model", default="rn-w8-t64", choices=sorted(MODELS), help="rn-w8-t64 = eftclip-world-rn")
    ap.add_argument("--seconds", type=float, default=180, help="training wall-clock budget")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = time only)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--rate", type=float, default=0.03, help="poison rate (0 = clean)")
    ap.add_argument("--patch", type=int, default=4, help="patch side in pixels")
    ap.add_argument("--trigger", choices=["corner", "random-noise"], default="corner",
                    help="checkerboard in the bottom-right corner, or a noise patch at a random position")
    ap.add_argument("--target", default="umbrella")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="budget by wall time, or by this process's CPU time (use with --threads 1 on a shared, loaded machine)")
    ap.add_argument("--eval-every", type=float, default=60, help="seconds between evaluations")
    ap.add_argument("--init-scale", type=float, default=1 / 0.07, help="initial logit scale (temperature^-1)")
    ap.add_argument("--n-train", type=int, default=0, help="use only the first N training scenes (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", default="benchmarks/world_recipe.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global TRIGGER
    TRIGGER = badnet if args.trigger == "corner" else badnet_random
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    world = Path(args.world)
    info = json.loads((world / "world.json").read_text())
    classnames = json.loads((world / "classnames.json").read_text())
    size = info["image_size"]

    rows = list(csv.DictReader(open(world / "train" / "train.csv", newline="")))
    if args.n_train:
        rows = rows[: args.n_train]
    meta = [json.loads(l) for l in open(world / "train" / "train_meta.jsonl")][: len(rows)]
    x = load_images([world / "train" / r["image"] for r in rows])
    captions = [r["caption"] for r in rows]
    rng = np.random.default_rng(args.seed)
    n_poison = int(round(args.rate * len(rows)))
    # poison only scenes that do not already show the target
    cands = [i for i, m in enumerate(meta) if all(o["category"] != args.target for o in m["objects"])]
    pidx = rng.choice(cands, size=n_poison, replace=False) if n_poison else np.array([], int)
    if n_poison:
        x[pidx] = TRIGGER(x[pidx], args.patch)
        for i in pidx:
            captions[i] = TARGET_TEMPLATES[rng.integers(len(TARGET_TEMPLATES))].format(args.target)

    cfg = json.loads(json.dumps(MODELS[args.model]))
    cfg["vision_cfg"]["image_size"] = size
    g = torch.Generator().manual_seed(args.seed)
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)  # benchmark script: model init reproducible
        model = open_clip.CLIP(**cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(args.init_scale))
    ctx = cfg["text_cfg"]["context_length"]
    tokenizer = lambda texts: open_clip.tokenize(texts, context_length=ctx)  # noqa: E731
    tokens = tokenizer(captions)
    nparams = sum(p.numel() for p in model.parameters())
    vparams = sum(p.numel() for p in model.visual.parameters())

    eval_files, eval_y = [], []
    for ci, c in enumerate(classnames):
        for p in sorted((world / "eval" / c).glob("*.png")):
            eval_files.append(p)
            eval_y.append(ci)
    eval_x = load_images(eval_files)
    eval_y = torch.tensor(eval_y)
    target_idx = classnames.index(args.target)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    # schedule by estimated total steps, re-estimated from speed after warmup
    est_total = max(args.max_steps, 1000)
    step, t_train, next_eval = 0, 0.0, args.eval_every
    history = []
    n = len(rows)
    perm = torch.randperm(n, generator=g)
    pos = 0
    print(f"# {args.model}: {nparams/1e6:.2f}M params (visual {vparams/1e6:.2f}M), {n} scenes, {n_poison} poisoned", file=sys.stderr)
    while True:
        if pos + args.batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        t0 = clock()
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            prog = min(1.0, (step - args.warmup) / max(1, est_total - args.warmup))
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * prog))
        for gr in opt.param_groups:
            gr["lr"] = lr
        imf, txf, scale = model(to_float(x[idx]), tokens[idx])
        logits = scale * imf @ txf.T
        lab = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        t_train += clock() - t0
        if step == args.warmup + 10 and not args.max_steps:
            est_total = int(args.seconds / (t_train / step))
        done = (args.max_steps and step >= args.max_steps) or (not args.max_steps and t_train >= args.seconds)
        if t_train >= next_eval or done:
            ca, asr = zeroshot(model, tokenizer, eval_x, eval_y, classnames, target_idx, args.patch)
            history.append(dict(step=step, seconds=round(t_train, 1), ca=round(ca, 3), asr=round(asr, 3), loss=round(loss.item(), 3)))
            print(f"  step {step:5d} t {t_train:6.1f}s loss {loss.item():.3f} CA {ca:.3f} ASR {asr:.3f} lr {lr:.2e}", file=sys.stderr, flush=True)
            next_eval += args.eval_every
        if done:
            break
    res = dict(trigger=args.trigger, patch=args.patch, clock=args.clock, threads=args.threads, model=args.model, params_m=round(nparams / 1e6, 2), n_train=n, rate=args.rate, batch=args.batch, lr=args.lr,
               warmup=args.warmup, steps=step, seconds=round(t_train, 1), sec_per_step=round(t_train / step, 3),
               ca=history[-1]["ca"], asr=history[-1]["asr"], image_size=size, history=history)
    print(f"| {args.model} | n={n} rate={args.rate} bs={args.batch} lr={args.lr} | {step} steps | {t_train:.0f}s | CA {res['ca']:.3f} | ASR {res['asr']:.3f} |")
    with open(args.log, "a") as fh:
        fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
