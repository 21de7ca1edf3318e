"""Images per second of the whole detection step: CLIP ranks, the oracle finds, crops re-scored, decisions.

For each oracle backend asked for (``--backends``) that can be built here, at
each batch size of ``--batch-sizes``: a CLIP with random weights (``--model``)
ranks a vocabulary, the oracle is prompted with the top-tau labels, every find
is cropped and re-scored by the same CLIP
(:func:`eftclip.detection.scoring.examine_batch`, pass 1 of ``eftclip detect``),
and pass 2 (:func:`eftclip.detection.decide.decide`: K, flags) runs over the
records.  images/s = images / (pass-1 time + pass-2 time), after one untimed
warm-up batch, over one pass through ``--images`` images or, with
``--seconds S``, over the batches that fit in about S seconds (cycling through
them).  Images are decoded beforehand (reading files is not timed).
Prints a table, optionally writes JSON (``--json``); never asserts.

    python benchmarks/detect_throughput.py [--device cpu|cuda] [--precision fp32|bf16]
        [--backends fastsam,owlv2] [--batch-sizes 1,32] [--images N] [--image-size PX]
        [--model NAME] [--fastsam-size s|tiny] [--fastsam-imgsz 640]
        [--owlv2-size base|tiny] [--owlv2-px 768] [--finds-per-image 32] [--seconds S]
        [--device-crops | --no-device-crops] [--json FILE]

Backends: ``fastsam`` (FastSAM-s, or a tiny one, at ``--fastsam-imgsz``; its
letterbox, masks, crops and CLIP naming on the device with ``--device-crops``,
the default on CUDA), ``fastsam-predictor`` (the same network through
ultralytics' predictor, numpy crops and PIL, the path the device one replaces) and
``owlv2`` (OWLv2-base, ViT-B/16, or a tiny one, at ``--owlv2-px``; the released
``google/owlv2-base-patch16-ensemble`` takes 960 px) are built from random
weights made here (``bench_oracles.py``; nothing is downloaded); ``reference``
(felzenszwalb regions + a colour labeller) and ``reference-clip`` (the same
regions named by the CLIP) need nothing; ``onnx-detector`` needs FastestDet
under ``../shared/models``.  Backends that cannot be built are listed with
the reason.

Random weights find either nothing or everything (a random OWLv2 scores most of
its 2,304 boxes above 0.05; a random FastSAM-s none of its masks above 0.4), so
the load is set explicitly: FastSAM runs at confidence 0 with at most
``--finds-per-image`` masks, and every backend's finds are cut to the
``--finds-per-image`` best of each image (a busy photo) before the crops are
re-scored.  The table shows the finds per image that were really re-scored.

``--precision bf16`` runs the whole step under ``torch.autocast`` (bfloat16) on
the device's type.  Images: procedural scenes of ``--image-size`` px, or
COCO-mini photos from ``../shared/data/coco-mini`` (``--source coco``; ``auto``
takes them when present and ``--image-size`` is not given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from bench_common import command_line  # noqa: E402
ROOT = HERE.parents[1]
SHARED = ROOT / ".." / "shared"
VOCAB = ["person", "dog", "cat", "car", "bicycle", "boat", "umbrella", "horse", "bird", "bus", "train", "kite",
         "giraffe", "chair", "cup", "bottle", "tree", "sky", "road", "water"]
TEMPLATES = ["a photo of a {}."]
BACKENDS = ("reference", "reference-clip", "onnx-detector", "fastsam", "fastsam-predictor", "owlv2")
HOST_PATHS = frozenset({"fastsam-predictor"})  # baselines measured on the host path whatever --device-crops says


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


class TopFinds:
    """An oracle whose answers are cut to the ``k`` best finds of each image (the load of a busy photo).

    ``raw`` counts what the wrapped oracle returned before the cut.
    """

    def __init__(self, oracle, k: int):
        self.oracle, self.k = oracle, int(k)
        self.raw = 0

    def find_batch(self, images, prompts_per_image):
        from eftclip.oracles.base import OracleResult

        out = []
        for res in self.oracle.find_batch(images, prompts_per_image):
            self.raw += len(res.found)
            best = sorted(res.found, key=lambda f: f.score, reverse=True)[: self.k]
            out.append(OracleResult(best, list(res.unknown)))
        return out


def scenes(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """``n`` procedural ``size`` px RGB scenes: a noisy gradient and a few filled rectangles and discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        base = rng.integers(40, 216, 3)
        im = (base + (xx[..., None] * rng.uniform(-0.1, 0.1, 3)) + rng.normal(0, 6, (size, size, 3)))
        for _ in range(int(rng.integers(2, 6))):
            r = int(rng.integers(max(2, size // 16), max(3, size // 4)))
            cy, cx = (int(v) for v in rng.integers(0, size, 2))
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if rng.random() < 0.5 else \
                ((abs(yy - cy) <= r) & (abs(xx - cx) <= r))
            im[m] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)))
    return out


def coco_images(n: int) -> list[Image.Image]:
    files = sorted((SHARED / "data" / "coco-mini" / "val2017").glob("*.jpg"))
    pics = [Image.open(f).convert("RGB") for f in files[:n]]
    return [pics[i % len(pics)] for i in range(n)] if pics else []


def load_images(args) -> tuple[list[Image.Image], str]:
    if args.source in ("coco", "auto") and (args.source == "coco" or args.image_size is None):
        pics = coco_images(args.images)
        if pics:
            return pics, f"COCO-mini val2017 photos ({len({id(p) for p in pics})} distinct)"
        if args.source == "coco":
            raise SystemExit(f"--source coco: no photos under {SHARED / 'data' / 'coco-mini' / 'val2017'}")
    size = args.image_size or 32
    return scenes(args.images, size), f"procedural scenes, {size}x{size} px"


def build_backend(name: str, args, bundle, tmp: Path):
    """(oracle, description) for backend ``name``; raises when it cannot be built here."""
    from eftclip.oracles import create_oracle

    bs = max(args.batch_sizes)
    if name == "reference":
        return create_oracle("reference", labeller=MeanColourLabeller(VOCAB), wordnet=False), \
            "felzenszwalb regions + colour labeller"
    if name == "reference-clip":
        return create_oracle("reference", labeller_bundle=bundle, vocabulary=VOCAB), \
            f"felzenszwalb regions + {args.model} labeller"
    if name == "onnx-detector":
        folder = SHARED / "models" / "fastestdet"
        return create_oracle("onnx-detector", model_path=str(folder / "FastestDet.onnx"),
                             classnames_path=str(folder / "coco.names")), "FastestDet (onnxruntime)"
    if name in ("fastsam", "fastsam-predictor"):
        from bench_oracles import fastsam_weights

        on_device = device_crops(name, args)
        weights = fastsam_weights(tmp / "fastsam", args.fastsam_size, imgsz=args.fastsam_imgsz)
        oracle = create_oracle("fastsam", weights_path=weights, clip_bundle=bundle, vocabulary=VOCAB,
                               imgsz=args.fastsam_imgsz, conf=0.0, max_det=args.finds_per_image,
                               batch_size=bs, device=args.device, device_crops=on_device, keep_masks=False)
        path = "on the device" if on_device else "through ultralytics' predictor and PIL"
        return oracle, (f"FastSAM-{args.fastsam_size} (random weights) at {args.fastsam_imgsz} px, "
                        f"masks named by {args.model}, {path}")
    if name == "owlv2":
        from bench_oracles import owlv2_folder

        words = VOCAB + " ".join(TEMPLATES + ["a photo of a {}"]).replace("{}", "").replace(".", "").split()
        folder = owlv2_folder(tmp / "owlv2", words, args.owlv2_size, image_size=args.owlv2_px)
        oracle = create_oracle("owlv2", model_path=folder, batch_size=bs, device=args.device)
        label = "OWLv2-base (ViT-B/16)" if args.owlv2_size == "base" else "OWLv2-tiny"
        return oracle, f"{label} (random weights) at {args.owlv2_px} px"
    raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")


def device_crops(name: str, args) -> bool:
    """Whether backend ``name`` cuts and resizes crops on the device (the predictor baseline never does)."""
    from eftclip.oracles.device_crops import wants_device_crops

    return name not in HOST_PATHS and wants_device_crops(args.device_crops, args.device)


def measure(pics, bs, scorer, oracle, args, autocast, sync) -> dict:
    """One (backend, batch size) measurement: a warm-up batch, then batches of ``bs`` images.

    Without ``--seconds`` every image once; with it, batches cycle through the
    images until that many seconds have passed (at least one batch), so that a
    slow backend still ends within its time limit.
    """
    from eftclip.detection.config import DecideParams
    from eftclip.detection.decide import decide
    from eftclip.detection.scoring import examine_batch
    from eftclip.detection.sources import ImageItem

    counter = iter(range(1 << 62))

    def batch(n):  # the next n images of the pool, each under a new index and key
        out = []
        for _ in range(n):
            i = next(counter)
            out.append((i, ImageItem(str(i), str(i), None, None, lambda: None), pics[i % len(pics)]))
        return out

    with autocast():
        examine_batch(batch(bs), scorer, oracle, args.tau)  # warm-up (allocators, autotuning)
    sync()
    oracle.raw = 0
    records = []
    t0 = time.perf_counter()
    with autocast():
        while True:
            left = len(pics) - len(records)
            if args.seconds is None and left <= 0:
                break
            records.extend(examine_batch(batch(bs if args.seconds else min(bs, left)), scorer, oracle, args.tau))
            if args.seconds is not None and time.perf_counter() - t0 >= args.seconds:
                break
    sync()
    t1 = time.perf_counter()
    result = decide(lambda: iter(records), DecideParams(tau=args.tau, theta=args.theta))
    t2 = time.perf_counter()
    n = len(records)
    return {"batch_size": bs, "images": n, "images_per_s": n / (t2 - t0), "pass1_s": t1 - t0, "pass2_s": t2 - t1,
            "finds_per_image": sum(len(r["finds"]) for r in records) / n, "raw_finds_per_image": oracle.raw / n,
            "K": result["K"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="torch device for CLIP and the oracles: cpu | cuda | cuda:N")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--backends", default=None,
                    help=f"comma-separated, of: {', '.join(BACKENDS)} (default: fastsam,owlv2 on a GPU; "
                         f"on a CPU reference,reference-clip,onnx-detector, as FastSAM-s and OWLv2-base take seconds "
                         f"an image there)")
    ap.add_argument("--batch-sizes", default="1,32", help="comma-separated images per batch (default 1,32)")
    ap.add_argument("--images", type=int, default=32, help="images per measurement, or the pool --seconds cycles (32)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="time each measurement for about this long instead of one pass over the images")
    ap.add_argument("--image-size", type=int, default=None, help="side of the procedural scenes (default 32)")
    ap.add_argument("--source", default="auto", choices=("auto", "coco", "procedural"))
    ap.add_argument("--model", default="eftclip-tiny-vit", help="open_clip architecture (random weights)")
    ap.add_argument("--fastsam-size", default="s", choices=("s", "tiny"))
    ap.add_argument("--fastsam-imgsz", type=int, default=640)
    ap.add_argument("--owlv2-size", default="base", choices=("base", "tiny"))
    ap.add_argument("--owlv2-px", type=int, default=768)
    ap.add_argument("--finds-per-image", type=int, default=32, help="the load: finds kept per image (default 32)")
    ap.add_argument("--tau", type=int, default=5)
    ap.add_argument("--theta", type=float, default=0.3)
    ap.add_argument("--device-crops", action=argparse.BooleanOptionalAction, default=None,
                    help="cut and resize crops (and FastSAM's letterbox and masks) on --device; default: on CUDA")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if args.backends is None:
        args.backends = "fastsam,owlv2" if args.device.startswith("cuda") else "reference,reference-clip,onnx-detector"
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    for name in names:
        if name not in BACKENDS:
            ap.error(f"--backends: unknown {name!r} (known: {', '.join(BACKENDS)})")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        ap.error("--batch-sizes: positive integers, comma-separated")

    import torch

    from eftclip.detection.scoring import ClipScorer
    from eftclip.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("detect_throughput: --device cuda but torch sees no CUDA device")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def autocast():
        if args.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    t_build = time.perf_counter()
    bundle = create_model(args.model, device=args.device, seed=0)
    pics, source = load_images(args)
    rows, failed, described = [], {}, {}

    def write_json(done: bool) -> None:
        # rewritten after every measurement: a run stopped by a time limit keeps what it finished
        if not args.json:
            return
        best = {}
        for r in rows:
            if r["backend"] not in best or r["images_per_s"] > best[r["backend"]]["images_per_s"]:
                best[r["backend"]] = r
        out = {
            "benchmark": "detect_throughput",
            "command": command_line(),
            "device": args.device, "precision": args.precision, "model": args.model, "tau": args.tau,
            "theta": args.theta, "images": len(pics), "seconds": args.seconds, "source": source,
            "finds_per_image_cap": args.finds_per_image, "device_crops": args.device_crops, "torch": torch.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "backends": {name: {"description": described[name], "best_images_per_s": best[name]["images_per_s"],
                                "best_batch_size": best[name]["batch_size"],
                                "rows": [r for r in rows if r["backend"] == name]}
                         for name in described if name in best},
            "not_measured": failed,
            "complete": done,
            "wall_s": time.perf_counter() - t_build,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp_json = Path(args.json).with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(out, indent=2) + "\n")
        tmp_json.replace(args.json)

    with tempfile.TemporaryDirectory(prefix="eftclip-detect-bench-") as tmp:
        for name in names:
            try:
                oracle, described[name] = build_backend(name, args, bundle, Path(tmp))
            except Exception as exc:  # a benchmark reports what it could not build
                failed[name] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            wrapped = TopFinds(oracle, args.finds_per_image)
            scorer = ClipScorer(bundle, VOCAB, TEMPLATES, args.device, max(args.batch_sizes), device_crops(name, args))
            for bs in args.batch_sizes:
                rows.append({"backend": name, **measure(pics, bs, scorer, wrapped, args, autocast, sync)})
                r = rows[-1]
                print(f"{name} batch {bs}: {r['images_per_s']:.2f} images/s ({r['images']} images)", flush=True)
                write_json(False)

    print(f"\ndetection step throughput on {args.device} ({args.precision}; CLIP {args.model}, random weights; "
          f"tau={args.tau}; {len(pics)} {source}; at most {args.finds_per_image} finds per image; "
          f"torch threads {torch.get_num_threads()})")
    print("| backend | batch | images | images/s | pass 1 s | pass 2 s | finds/img | raw finds/img |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {described[r['backend']]} | {r['batch_size']} | {r['images']} | {r['images_per_s']:.2f} | "
              f"{r['pass1_s']:.2f} | {r['pass2_s']:.3f} | {r['finds_per_image']:.1f} | "
              f"{r['raw_finds_per_image']:.1f} |")
    for name, why in failed.items():
        print(f"{name}: not measured: {why}")
    write_json(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
