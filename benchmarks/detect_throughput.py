"""Images per second of the whole detection step (CLIP ranks, oracle finds, crops re-scored), on CPU.

For each oracle backend that can be built here, at batch sizes 1 and 32:
a tiny project CLIP (``eftclip-tiny-vit`` at 32 px, or ``--model``) ranks a
vocabulary, the oracle is prompted with the top-tau labels, and every find is
cropped and re-scored by the same CLIP (:func:`eftclip.detection.runner.examine_batch`).
Prints a table; never asserts.  Backends that cannot be built (missing extra,
missing weights) are listed with the reason.

    python benchmarks/detect_throughput.py [--images N] [--model NAME] [--threads T]

Images: COCO-mini photos from ``../shared/data/coco-mini`` when present
(resized to the model's size for CLIP, full size for the oracle), else
procedural 32 px scenes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
VOCAB = ["person", "dog", "cat", "car", "bicycle", "boat", "umbrella", "horse", "bird", "bus", "train", "kite",
         "giraffe", "chair", "cup", "bottle", "tree", "sky", "road", "water"]


class MeanColourLabeller:
    """A clean fixed-vocabulary classifier for the reference oracle: nearest mean colour."""

    def __init__(self, classnames):
        self.classnames = list(classnames)
        self.prototypes = np.random.default_rng(0).integers(0, 255, (len(classnames), 3)).astype(np.float64)

    def __call__(self, crops):
        means = np.stack([c.reshape(-1, 3).mean(axis=0) for c in crops])
        d = np.linalg.norm(means[:, None] - self.prototypes[None], axis=2) / 20.0
        e = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return e / e.sum(axis=1, keepdims=True)


def images(n: int) -> list[Image.Image]:
    coco = SHARED / "data" / "coco-mini" / "val2017"
    files = sorted(coco.glob("*.jpg"))[:n] if coco.is_dir() else []
    if files:
        return [Image.open(f).convert("RGB") for f in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        im = np.full((32, 32, 3), 120, np.uint8)
        x, y = rng.integers(0, 20, size=2)
        im[y : y + 12, x : x + 12] = rng.integers(0, 255, 3)
        out.append(Image.fromarray(im))
    return out


def backends(bundle):
    from eftclip.oracles import create_oracle

    built, failed = {}, {}
    specs = {
        "reference (felzenszwalb + colour labeller)": ("reference", {"labeller": MeanColourLabeller(VOCAB), "wordnet": False}),
        "reference (felzenszwalb + clean CLIP labeller)": ("reference", {"labeller_bundle": bundle, "vocabulary": VOCAB}),
        "onnx-detector (FastestDet)": ("onnx-detector", {
            "model_path": str(SHARED / "models" / "fastestdet" / "FastestDet.onnx"),
            "classnames_path": str(SHARED / "models" / "fastestdet" / "coco.names")}),
    }
    for label, (name, kw) in specs.items():
        try:
            built[label] = create_oracle(name, **kw)
        except Exception as exc:  # a benchmark reports what it could not build
            failed[label] = f"{type(exc).__name__}: {exc}"[:120]
    for name in ("fastsam", "owlv2", "grounding-dino"):
        failed[name] = "needs local weights (not shipped); pass them to create_oracle to measure"
    return built, failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="images per measurement (default 32)")
    ap.add_argument("--model", default="eftclip-tiny-vit", help="open_clip architecture (random weights)")
    ap.add_argument("--tau", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)

    import torch

    from eftclip.detection.runner import ClipScorer, ImageItem, examine_batch
    from eftclip.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = create_model(args.model)
    scorer = ClipScorer(bundle, VOCAB, ["a photo of a {}."], "cpu", 32)
    pics = images(args.images)
    built, failed = backends(bundle)
    rows = []
    for label, oracle in built.items():
        for bs in (1, 32):
            n_find = 0
            t0 = time.perf_counter()
            for start in range(0, len(pics), bs):
                batch = [(i, ImageItem(str(i), str(i), None, None, lambda: None), pics[i])
                         for i in range(start, min(start + bs, len(pics)))]
                recs = examine_batch(batch, scorer, oracle, args.tau)
                n_find += sum(len(r["finds"]) for r in recs)
            dt = time.perf_counter() - t0
            rows.append((label, bs, len(pics) / dt, n_find / len(pics)))
    print(f"\ndetection step throughput on CPU ({args.model}, tau={args.tau}, {len(pics)} images, "
          f"torch threads {torch.get_num_threads()})")
    print(f"{'backend':52s} {'batch':>5s} {'img/s':>8s} {'finds/img':>10s}")
    for label, bs, ips, fpi in rows:
        print(f"{label:52s} {bs:5d} {ips:8.2f} {fpi:10.1f}")
    for label, why in failed.items():
        print(f"{label:52s}   not measured: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
