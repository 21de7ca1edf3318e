"""The stage functions that ``demo`` and ``study`` chain.

Each takes a :class:`Context` (where outputs go, the seed, the device, the
target) and returns plain JSON data (paths as strings, numbers), which the
stage runner stores so that a resumed pipeline gets the same values back
without redoing the work.  Sub-runs keep their own resumability: training
resumes from its last checkpoint, detection from its last written image.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eftclip.errors import EftclipError


@dataclass
class Context:
    """Where one pipeline writes, and what it is about."""

    out: Path  # the pipeline's output folder
    seed: int  # base seed: every random choice derives from it
    device: str  # torch device ("auto", "cpu", "cuda")
    templates: list[str]  # zero-shot prompt templates
    target: str  # the attack's target label
    world: dict = field(default_factory=dict)  # paths of the world / dataset parts (set by a stage)
    eval_dir: str | None = None  # zero-shot ImageFolder; defaults to world["eval"]
    classnames: str | None = None  # class names spec for the eval folder; defaults to world["classnames"]
    progress: bool = True  # show progress bars
    train_procs: int = 1  # processes per training run: > 1 = one torchrun job (see eftclip.pipeline.torchrun)

    def eval_spec(self) -> tuple[str, str]:
        return (self.eval_dir or str(self.world["eval"]), self.classnames or str(self.world["classnames"]))


# --------------------------------------------------------------------------- world and data


def build_trigger(ctx: Context, attack: str, params: dict, surrogate_checkpoint: str | None,
                  surrogate_images: list[str] = ()) -> dict:
    """Resolve the trigger's parameters; TrojanNN-style optimises its patch first, against the
    surrogate CLIP on 256 of ``surrogate_images`` (paths of the attacker's own images).

    Returns ``{"name", "params"}`` from which :func:`make_trigger` rebuilds it.
    """
    from eftclip.attacks import create_trigger

    params = dict(params)
    if attack == "trojannn" and "pattern_file" not in params:
        import numpy as np
        import torch

        from eftclip.attacks.trojannn import TrojanNNTrigger, save_pattern
        from eftclip.data.images import open_image
        from eftclip.models import load_checkpoint

        if surrogate_checkpoint is None or not surrogate_images:
            raise EftclipError("the trojannn attack needs a surrogate model and images to optimise its patch against")
        bundle = load_checkpoint(surrogate_checkpoint)
        rng = np.random.default_rng([ctx.seed, 17])
        picks = rng.choice(len(surrogate_images), size=min(256, len(surrogate_images)), replace=False)
        images = [np.asarray(open_image(surrogate_images[int(i)])) for i in picks]
        gen = torch.Generator().manual_seed(ctx.seed)
        size = int(params.get("size", 6))
        pattern = TrojanNNTrigger.optimise(bundle, ctx.target, images, steps=int(params.pop("steps", 150)), rng=gen,
                                           size=size, position=str(params.get("position", "random")),
                                           progress=ctx.progress)
        path = save_pattern(pattern, ctx.out / "trigger" / "trojannn_pattern.png")
        params["pattern_file"] = str(path)
    trigger = create_trigger(attack, **params)  # validates the parameters now, not mid-run
    return {"name": attack, "params": trigger.params()}


def make_trigger(trig: dict):
    """The trigger ``{"name", "params"}`` stands for: an attack, or a recovered trigger (mask and pattern
    files; not an attack, so not in the attack registry)."""
    import functools

    from eftclip.attacks import create_trigger
    from eftclip.attacks.recovered import RecoveredTrigger

    params = {k: v for k, v in trig["params"].items() if k != "name"}
    builders = {RecoveredTrigger.name: RecoveredTrigger}
    return builders.get(trig["name"], functools.partial(create_trigger, trig["name"]))(**params)


def poison(ctx: Context, csv: str, trig: dict, *, rate: float | None = None, num: int | None = None,
           name: str, seed_offset: int = 0, templates: list[str] | None = None,
           avoid_target: bool = False, rows: list[int] | None = None) -> dict:
    """``templates``: the poisoned captions (default: poison.DEFAULT_TEMPLATES); ``avoid_target``:
    trigger only rows that do not mention the target; ``rows``: positions that may be poisoned
    (see poison_dataset)."""
    from eftclip.attacks.poison import poison_dataset

    out = ctx.out / "poisoned" / name
    manifest = poison_dataset(csv, make_trigger(trig), ctx.target, rate=rate, num=num, out=out,
                              seed=ctx.seed + seed_offset, templates=templates,
                              avoid_target=avoid_target, rows=rows, force=True, progress=ctx.progress)
    return {"csv": str(out / "data.csv"), "manifest": str(out / "manifest.json"),
            "poisoned": int(manifest.get("counts", {}).get("poisoned", 0))}


def detection_set(ctx: Context, trig: dict, *, scenes: int, share: float) -> dict:
    """A mixed detection set from the world's held-apart clean scenes: ``share`` of them triggered.

    Poisoning machinery is reused so the CSV has the ``is_poisoned`` ground truth;
    captions do not matter to detection (the detector never reads them as truth).
    Triggered scenes are drawn from those without the target, the way ASR counts only
    images not of the target class: a triggered scene that really holds an umbrella is
    rightly not flagged, and would only blur the detection rate.
    """
    from eftclip.data.captions import read_captions, write_captions_csv

    table = read_captions(ctx.world["detect_csv"])
    if scenes > len(table.records):
        raise EftclipError(f"the detection set asks for {scenes} scenes; the world's detect split has "
                           f"{len(table.records)}")
    subset = ctx.out / "detect_set" / "source.csv"
    records = table.records[:scenes]
    # further columns (a labelled folder's 'label') travel on, for scoring: poisoning keeps them
    extra = list(dict.fromkeys(col for r in records for col in r.extra))
    write_captions_csv(subset, [{"image": r.image, "caption": r.caption, **r.extra} for r in records],
                       ["image", "caption", *extra])
    result = poison(ctx, str(subset), trig, num=max(1, int(round(share * scenes))), name="detect", seed_offset=101,
                    avoid_target=True)
    return result


# --------------------------------------------------------------------------- models


def _device(ctx: Context) -> str:
    return ctx.device


def _train(ctx: Context, cfg: Any, verb: str) -> dict:
    """Run ``cfg`` (``verb``: ``train`` or ``finetune``; ``cfg.batch_size`` is the global batch) here, or as
    one torchrun job of ``ctx.train_procs`` processes; either way return the run's summary."""
    import sys

    from eftclip.pipeline.torchrun import check_resume_split, train_with_torchrun
    from eftclip.training import TrainConfig

    # RoCLIP's caption pool is per process: split over ranks it would match other captions
    procs = 1 if isinstance(cfg, TrainConfig) and cfg.defense == "roclip" else ctx.train_procs
    check_resume_split(cfg, procs)
    if procs == 1:
        from eftclip.training import finetune as run_finetune, train

        return (train if verb == "train" else run_finetune)(cfg)
    if cfg.cpu_threads is None:  # each rank keeps the stage's torch threads (the executor's setting)
        import torch

        cfg = dataclasses.replace(cfg, cpu_threads=torch.get_num_threads())
    return train_with_torchrun(cfg, verb, procs, ctx.out, echo=sys.stderr if ctx.progress else None)


def pretrain(ctx: Context, name: str, csv: str, recipe: Any, *, train_args: dict | None = None) -> dict:
    """``train_args``: further :class:`TrainConfig` fields (workers, cache_images, defense, ...)."""
    from eftclip.training import TrainConfig

    out = ctx.out / "models" / name
    cfg = TrainConfig(
        data=csv, model=recipe.model, out=str(out), epochs=recipe.epochs, batch_size=recipe.batch_size,
        lr=recipe.lr, warmup=recipe.warmup, weight_decay=recipe.weight_decay, seed=ctx.seed,
        crop_scale_min=recipe.crop_scale_min, precision=recipe.precision, channels_last=recipe.channels_last,
        device=_device(ctx), progress=ctx.progress,
        resume=(out / "config.yaml").exists(), **(train_args or {}),
    )
    t0 = time.perf_counter()
    summary = _train(ctx, cfg, "train")
    return {"checkpoint": str(out / "final.safetensors"), "seconds": time.perf_counter() - t0,
            "summary": _jsonable(summary)}


def finetune(ctx: Context, name: str, checkpoint: str, csv: str, recipe: Any, *, subset: int | None = None,
             train_args: dict | None = None) -> dict:
    """``recipe``: a FinetuneRecipe; ``train_args``: further :class:`FinetuneConfig` fields
    (objective, anchor_weight, workers, cache_images, ...)."""
    from eftclip.training import FinetuneConfig

    out = ctx.out / "defenses" / name
    args = {"objective": recipe.objective, "eda_synonyms": recipe.eda_synonyms, "precision": recipe.precision,
            "channels_last": recipe.channels_last, **(train_args or {})}
    cfg = FinetuneConfig(
        checkpoint=checkpoint, data=csv, out=str(out), subset=subset,
        subset_seed=ctx.seed, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
        warmup=recipe.warmup, seed=ctx.seed, device=_device(ctx), progress=ctx.progress,
        resume=(out / "config.yaml").exists(), **args,
    )
    t0 = time.perf_counter()
    summary = _train(ctx, cfg, "finetune")
    if subset is None:
        from eftclip.data.captions import read_captions

        pairs = len(read_captions(csv).records)
    else:
        pairs = subset
    return {"checkpoint": str(out / "final.safetensors"), "pairs": int(pairs),
            "seconds": time.perf_counter() - t0, "summary": _jsonable(summary)}


def evaluate(ctx: Context, checkpoint: str, trig: dict, *, model_name: str | None = None, num_workers: int = 0,
             batch_size: int = 256) -> dict:
    """``num_workers``: DataLoader workers that load and trigger the images (GPU runs); ``model_name``:
    the architecture of a checkpoint without eftclip's side file (a pretrained model by name)."""
    from eftclip.data.zeroshot import ImageFolderSet
    from eftclip.evaluation.zeroshot import evaluate as zs_evaluate
    from eftclip.models import load_checkpoint

    eval_dir, classnames = ctx.eval_spec()
    bundle = load_checkpoint(checkpoint, model_name=model_name)
    dataset = ImageFolderSet(eval_dir, classnames=classnames)
    device = "cuda" if ctx.device == "auto" and _cuda() else ("cpu" if ctx.device == "auto" else ctx.device)
    return _jsonable(zs_evaluate(bundle, dataset, templates=ctx.templates, trigger=make_trigger(trig),
                                 target=ctx.target, seed=ctx.seed, device=device, progress=ctx.progress,
                                 num_workers=num_workers, batch_size=batch_size))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------- detection and curation


def detect(ctx: Context, checkpoint: str, csv: str, oracle: dict, recipe: Any, *,
           oracle_args: dict | None = None, detect_args: dict | None = None) -> dict:
    """``oracle_args``: the reference oracle's constructor arguments; default: the world's
    region classifier over the world's flat-region proposals (``oracle["region_classifier"]``).
    ``detect_args``: further :class:`DetectConfig` fields (device, batch_size, min_share, ...)."""
    from eftclip.detection.runner import DetectConfig, run_detection
    from eftclip.io import read_json

    out = ctx.out / "detection"
    vocab = read_json(ctx.world["classnames"]) if ctx.world.get("classnames") else None
    vocab_file = ctx.out / "detection_vocab.txt"
    if vocab is not None:
        from eftclip.io import write_text

        write_text(vocab_file, "\n".join(vocab) + "\n")
    cfg = DetectConfig(
        checkpoint=checkpoint, images=csv, out=str(out),
        vocab=str(vocab_file) if vocab is not None else "mined",
        oracle="reference",
        oracle_args=oracle_args if oracle_args is not None else {"region_classifier": oracle["region_classifier"],
                                                                 "regions": "world"},
        tau=recipe.tau, theta=recipe.theta, mode=recipe.mode, target=ctx.target,
        templates=tuple(ctx.templates), resume=(out / "images.jsonl").exists() or (out / "run.json").exists(),
        **(detect_args or {}),
    )
    metrics = run_detection(cfg)
    return {"dir": str(out), "metrics": _jsonable(metrics), "profile": read_profile(out / "affected_labels.csv")}


def read_profile(path: Path) -> dict[str, int]:
    """``affected_labels.csv`` as ``{label: count}``, most frequent first."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return {row["label"]: int(row["count"]) for row in csv.DictReader(fh)}


def curate(ctx: Context, detection_dir: str, *, size: int, unaffected_ratio: float, repair_share: float = 0.0,
           name: str = "curated", **options: Any) -> dict:
    """The compact set of ``size`` pool pairs (see :func:`eftclip.curation.curate`); ``repair_share``:
    share taken from flagged images with the oracle's labels (0 = the paper's set); ``options``:
    further curate() arguments."""
    from eftclip.curation import curate as run_curate

    out = ctx.out / name
    manifest = run_curate(detection_dir, ctx.world["pool_csv"], size=size,
                          unaffected_ratio=unaffected_ratio, out=out, seed=ctx.seed,
                          repair_share=repair_share, **options)
    return {"csv": str(manifest.get("csv", out / "finetune.csv")), "manifest": _jsonable(manifest)}


# --------------------------------------------------------------------------- summaries and report


def summary(evaluation: dict) -> dict:
    return {"ca": evaluation.get("ca_top1"), "asr": evaluation.get("asr")}


def detection_summary(detection: dict, target: str) -> dict:
    m = detection["metrics"]
    return {
        "triggers": m.get("K", m.get("triggers", [])),
        "target_found": bool(m.get("target_in_K", target in m.get("K", []))),
        "detection_rate": m.get("detection_rate"),
        "precision": m.get("precision"),
        "false_positive_rate": m.get("false_positive_rate"),
        "affected_labels": detection.get("profile", {}),
    }


def write_report(out: Path, metrics: dict, **parts: Any) -> dict:
    from eftclip.pipeline.report import write_demo_report

    return write_demo_report(out, metrics, **parts)


def _jsonable(obj: Any) -> Any:
    from eftclip.io import plain_json

    return plain_json(obj)
