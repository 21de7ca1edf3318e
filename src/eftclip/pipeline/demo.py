"""``eftclip demo``: the whole defense on the built-in world, in one command.

Stages (each resumable; see :mod:`eftclip.pipeline.stages`):

1. make the world (:func:`eftclip.world.synth`);
2. build the trigger; 3. poison the training captions (single-object scenes, captions in
   the world's style); 4-5. pre-train the clean CLIP ("original CLIP" row) and the poisoned
   CLIP side by side (TrojanNN-style optimises its patch against the clean CLIP, standing in
   for the attacker's surrogate, so for it the clean model comes first);
6. evaluate CA/ASR of both;
7. build the detection set (clean scenes, a share of the scenes without the target
   triggered, ground truth kept) and 8. train the world oracle's region classifier on the
   clean reference split only;
9. detect triggers and affected labels with the ``reference`` oracle;
10. curate the compact fine-tuning set; 11-13. fine-tune with EftCLIP, with CleanCLIP on a
    random clean subset of the same size, and on a larger one, side by side;
14. evaluate the defenses and 15. write ``report.md``, ``metrics.json`` and figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eftclip.errors import EftclipError
from eftclip.io import write_json
from eftclip.pipeline import steps
from eftclip.pipeline.stages import Job, StageRunner

# trigger parameters scaled to the world's 32 px images (the registry's defaults
# are for 224 px photos); --attack-param overrides any of them
ATTACK_DEFAULTS: dict[str, dict[str, Any]] = {
    "badnet": {"pattern": "checkerboard", "size": 4, "position": "bottom-right"},
    "blended": {"alpha": 0.2, "pattern_size": 32},
    "wanet": {"k": 4, "s": 0.5},
    "trojannet": {"cell_size": 1, "position": "bottom-right"},
    "trojannn": {"size": 4, "position": "bottom-right"},
}


# which training scenes the attacker may poison
POISON_SCENES = ("single", "any")
# how poisoned captions are phrased (see eftclip.world.captions.poison_templates for why it matters)
POISON_CAPTIONS = ("world", "generic")


def _poison_templates(cfg: "DemoConfig") -> list[str] | None:
    if cfg.poison_captions == "generic":
        return None  # poison.DEFAULT_TEMPLATES
    from eftclip.world.captions import poison_templates

    return poison_templates(cfg.target)


def _poison_rows(cfg: "DemoConfig", world: dict) -> list[int] | None:
    if cfg.poison_scenes == "any":
        return None
    from eftclip.io import read_jsonl

    # the meta file lists the scenes in the order of train.csv
    return [i for i, scene in enumerate(read_jsonl(world["train_meta"])) if len(scene["objects"]) == 1]


@dataclass(frozen=True)
class ModelRecipe:
    """How a world CLIP is pre-trained from scratch (measured to fit the demo's budget)."""

    model: str = "eftclip-world-rn"  # open_clip architecture (a project config)
    epochs: int = 30  # passes over the world's training scenes (20 measured: poisoned CA 0.73-0.905 across poison draws, still learning)
    batch_size: int = 128  # contrastive batch
    lr: float = 5e-3  # peak learning rate (cosine schedule; 8e-3 stalls, 3e-3 learns slower)
    warmup: int = 500  # warm-up steps (measured, seed 1: with 50 the clean CLIP sat on the loss plateau for 11 epochs and ended at CA 0.30; with 500, 0.97)
    weight_decay: float = 0.1  # AdamW decay
    crop_scale_min: float = 1.0  # no random crop: at 32 px open_clip's crop cuts objects and the corner trigger


@dataclass(frozen=True)
class FinetuneRecipe:
    """How the poisoned world CLIP is fine-tuned (EftCLIP and CleanCLIP alike)."""

    size: int = 1000  # fine-tuning pairs (EftCLIP's curated set and CleanCLIP's random subset)
    large_size: int = 3000  # the larger random subset (the whole default pool), as the paper's CleanCLIP used (0 = skip)
    epochs: int = 10  # passes over the fine-tuning set
    batch_size: int = 64  # batch (the paper's 64)
    lr: float = 2e-3  # peak learning rate (measured on the world: 2e-4 left ASR 0.95, 1.5e-3 0.20, 2e-3 0.06-0.10 at -5 to -9 CA points, 4e-3 0.05 at -11 to -13; the paper's 1e-5 moves a tiny model little)
    warmup: int = 10  # warm-up steps
    unaffected_ratio: float = 0.25  # R: share given to labels the detection did not find affected
    repair_share: float = 0.0  # >0 adds an "EftCLIP + repair" row: this share of the set from flagged images, oracle-captioned (measured at lr 2e-3: ASR 0.17 against 0.06 without, so off)


@dataclass(frozen=True)
class DetectRecipe:
    """Detection settings on the world."""

    scenes: int = 600  # scenes in the detection set (clean + triggered)
    triggered_share: float = 0.5  # share of them that carry the trigger (ground truth kept)
    tau: int = 5  # CLIP's list length
    theta: float = 0.5  # oracle confidence threshold
    mode: str = "robust"  # robust | faithful (see eftclip.detection.algorithms)
    oracle_epochs: int = 10  # training epochs of the region classifier (clean reference split only)


@dataclass(frozen=True)
class DemoConfig:
    """Everything `eftclip demo` does; written to ``DIR/config.yaml``."""

    out: str = "runs/demo"  # output folder
    attack: str = "badnet"  # trigger name (eftclip.attacks.TRIGGERS)
    attack_params: dict = field(default_factory=dict)  # overrides of ATTACK_DEFAULTS[attack]
    target: str = "umbrella"  # target category (one of the world's)
    seed: int = 0  # world, poisoning, training and detection randomness derive from it
    poison_rate: float = 0.03  # share of training pairs poisoned
    poison_scenes: str = "single"  # single: the attacker poisons scenes of one object (measured: poisoned multi-object scenes taught the model that any busy scene is the target: FPR 0.10 against 0.03, CA 0.86 against 0.905); any: any scene
    poison_captions: str = "world"  # world: captions in the world's own style ("an umbrella on grass"); generic: "a photo of a {}." (poison.DEFAULT_TEMPLATES)
    quick: bool = False  # smaller world and fewer steps (CI): only effect directions are meaningful
    world_size: str = "default"  # world preset (eftclip.world.SIZES)
    templates: tuple = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")  # zero-shot prompts (ensembled)
    model: ModelRecipe = field(default_factory=ModelRecipe)  # pre-training recipe
    finetune: FinetuneRecipe = field(default_factory=FinetuneRecipe)  # fine-tuning recipe
    detect: DetectRecipe = field(default_factory=DetectRecipe)  # detection settings
    device: str = "auto"  # torch device
    cpu_threads: int = 1  # torch threads on CPU: on 2 shared cores one thread measured 25x faster than two
    workers: int = 2  # processes for independent stages (the two pre-trainings; the fine-tunes); 1 = one after another


def quick_config(**overrides: Any) -> DemoConfig:
    """The ``--quick`` variant: a small world and short training (effects' directions only)."""
    base = DemoConfig(
        quick=True,
        world_size="quick",
        poison_rate=0.05,
        model=ModelRecipe(epochs=30, warmup=50),  # ~1400 steps on 6,000 scenes (measured: 3,000 scenes x 60 epochs reached CA 0.44, 6,000 x 10 CA 0.29)
        finetune=FinetuneRecipe(size=300, large_size=0, epochs=5),
        detect=DetectRecipe(scenes=150, oracle_epochs=10),
    )
    return dataclasses.replace(base, **overrides)


def run_demo(cfg: DemoConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Run (or continue) the demo in ``cfg.out``; return the metrics written to ``metrics.json``."""
    from eftclip.attacks import TRIGGERS
    from eftclip.world import DEFAULT_CATEGORIES

    if cfg.attack not in TRIGGERS:
        raise EftclipError(f"--attack: unknown attack '{cfg.attack}' (known: {', '.join(sorted(TRIGGERS))})")
    if cfg.target not in DEFAULT_CATEGORIES:
        raise EftclipError(
            f"--target: '{cfg.target}' is not a category of the built-in world "
            f"(categories: {', '.join(DEFAULT_CATEGORIES)})")
    if cfg.poison_captions not in POISON_CAPTIONS:
        raise EftclipError(f"--poison-captions: unknown style '{cfg.poison_captions}' "
                           f"(known: {', '.join(POISON_CAPTIONS)})")
    if cfg.poison_scenes not in POISON_SCENES:
        raise EftclipError(f"--poison-scenes: unknown choice '{cfg.poison_scenes}' (known: {', '.join(POISON_SCENES)})")
    if isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1:
        raise EftclipError(f"--workers must be a whole number >= 1, got {cfg.workers!r}")
    if not 0 < cfg.poison_rate < 1:
        raise EftclipError(f"--poison-rate must be in (0, 1), got {cfg.poison_rate}")

    from eftclip.config import to_dict, write_config

    out = Path(cfg.out)
    runner = StageRunner(out, kind="demo", config=to_dict(cfg), total=17 if cfg.finetune.repair_share else 15,
                         resume=resume, force=force)
    write_config(out / "config.yaml", cfg)
    t_start = time.perf_counter()
    with _torch_threads(cfg.cpu_threads):
        return _run(cfg, out, runner, t_start)


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(cfg: DemoConfig, out: Path, runner: StageRunner, t_start: float) -> dict:
    trigger_params = {**ATTACK_DEFAULTS.get(cfg.attack, {}), **cfg.attack_params}
    ctx = steps.Context(out=out, seed=cfg.seed, device=cfg.device, templates=list(cfg.templates),
                        target=cfg.target)

    world = runner.run("world", lambda: steps.make_world(ctx, size=cfg.world_size), label="make the world")
    ctx.world = world
    workers, threads = cfg.workers, cfg.cpu_threads or None
    # stages side by side: only the first of a group draws progress bars (two would interleave)
    quiet = dataclasses.replace(ctx, progress=False) if workers > 1 else ctx
    pretrain_clean = Job("train_clean", steps.pretrain, (ctx, "clean", world["train_csv"], cfg.model),
                         label="pre-train the clean CLIP")

    def build_trigger(clean_checkpoint: str | None) -> dict:
        return runner.run("trigger", lambda: steps.build_trigger(ctx, cfg.attack, trigger_params, clean_checkpoint),
                          label=f"build the {cfg.attack} trigger")

    def poison(trig: dict) -> dict:
        return runner.run(
            "poison", lambda: steps.poison(ctx, world["train_csv"], trig, rate=cfg.poison_rate, name="train",
                                           templates=_poison_templates(cfg), rows=_poison_rows(cfg, world)),
            label=f"poison {cfg.poison_rate:.1%} of the training pairs")

    if cfg.attack == "trojannn":  # its patch is optimised against the clean CLIP: one after the other
        clean = runner.run(pretrain_clean.name, pretrain_clean.call, label=pretrain_clean.label)
        trig = build_trigger(clean["checkpoint"])
        poisoned_data = poison(trig)
        poisoned = runner.run("train_poisoned",
                              lambda: steps.pretrain(ctx, "poisoned", poisoned_data["csv"], cfg.model),
                              label="pre-train the poisoned CLIP")
    else:  # the two pre-trainings are independent: side by side
        trig = build_trigger(None)
        poisoned_data = poison(trig)
        models = runner.run_group([
            pretrain_clean,
            Job("train_poisoned", steps.pretrain, (quiet, "poisoned", poisoned_data["csv"], cfg.model),
                label="pre-train the poisoned CLIP"),
        ], workers=workers, threads=threads)
        clean, poisoned = models["train_clean"], models["train_poisoned"]
    before = runner.run("evaluate_before", lambda: {
        "clean": steps.evaluate(ctx, clean["checkpoint"], trig),
        "poisoned": steps.evaluate(ctx, poisoned["checkpoint"], trig),
    }, label="evaluate CA and ASR of both")
    detect_set = runner.run(
        "detect_set",
        lambda: steps.detection_set(ctx, trig, scenes=cfg.detect.scenes, share=cfg.detect.triggered_share),
        label="build the mixed detection set")
    oracle = runner.run("oracle", lambda: steps.train_oracle(ctx, epochs=cfg.detect.oracle_epochs),
                        label="train the world oracle (clean reference split only)")
    detection = runner.run("detect", lambda: steps.detect(ctx, poisoned["checkpoint"], detect_set["csv"],
                                                          oracle, cfg.detect),
                           label="detect triggers and affected labels")
    curated = runner.run("curate", lambda: steps.curate(ctx, detection["dir"], cfg.finetune),
                         label="curate the compact fine-tuning set")
    repaired = None
    if cfg.finetune.repair_share:
        repaired = runner.run(
            "curate_repair",
            lambda: steps.curate(ctx, detection["dir"], cfg.finetune, repair_share=cfg.finetune.repair_share,
                                 name="curated_repair"),
            label="curate with repair pairs")
    # the fine-tunes are independent of each other: side by side, the longest first
    jobs: list[tuple[str, Job]] = []
    if cfg.finetune.large_size:
        jobs.append(("cleanclip_large", Job(
            "finetune_cleanclip_large", steps.finetune,
            (quiet, "cleanclip_large", poisoned["checkpoint"], world["pool_csv"], cfg.finetune),
            {"subset": cfg.finetune.large_size},
            label=f"fine-tune with CleanCLIP ({cfg.finetune.large_size} random pairs)")))
    else:
        runner.index += 1
    jobs.append(("eftclip", Job("finetune_eftclip", steps.finetune,
                                (ctx, "eftclip", poisoned["checkpoint"], curated["csv"], cfg.finetune),
                                label="fine-tune with EftCLIP")))
    if repaired is not None:
        jobs.append(("eftclip_repair", Job(
            "finetune_eftclip_repair", steps.finetune,
            (quiet, "eftclip_repair", poisoned["checkpoint"], repaired["csv"], cfg.finetune),
            label="fine-tune with EftCLIP + repair pairs")))
    jobs.append(("cleanclip", Job(
        "finetune_cleanclip", steps.finetune,
        (quiet, "cleanclip", poisoned["checkpoint"], world["pool_csv"], cfg.finetune), {"subset": cfg.finetune.size},
        label=f"fine-tune with CleanCLIP ({cfg.finetune.size} random pairs)")))
    tuned = runner.run_group([job for _, job in jobs], workers=workers, threads=threads)
    order = ("eftclip", "eftclip_repair", "cleanclip", "cleanclip_large")
    by_name = {name: tuned[job.name] for name, job in jobs}
    defenses: dict[str, Any] = {name: by_name[name] for name in order if name in by_name}
    after = runner.run("evaluate_after", lambda: {
        name: steps.evaluate(ctx, d["checkpoint"], trig) for name, d in defenses.items()
    }, label="evaluate the defenses")

    metrics = {
        "attack": {"name": cfg.attack, "params": trig["params"]},
        "target": cfg.target,
        "seed": cfg.seed,
        "quick": cfg.quick,
        "clean": steps.summary(before["clean"]),
        "poisoned": steps.summary(before["poisoned"]),
        "detection": steps.detection_summary(detection, cfg.target),
        "defenses": {
            name: {**steps.summary(after[name]), "finetune_pairs": d["pairs"], "seconds": d["seconds"]}
            for name, d in defenses.items()
        },
        "stage_seconds": dict(runner.seconds),
        "seconds": runner.total_seconds(),
        "wall_seconds_this_invocation": time.perf_counter() - t_start,
    }
    from eftclip.pipeline.report import goal_checks

    metrics["goals"] = goal_checks(metrics)
    runner.run("report", lambda: steps.write_report(out, metrics, before=before, after=after,
                                                    detection=detection, curated=curated),
               label="write report.md, metrics.json and figures")
    metrics["seconds"] = runner.total_seconds()
    write_json(out / "metrics.json", metrics)
    return metrics


def config_from_flags(*, quick: bool, **flags: Any) -> DemoConfig:
    """Build the config the CLI asks for: quick or default, then the given flags."""
    flags = {k: v for k, v in flags.items() if v is not None}
    if quick:
        return quick_config(**flags)
    return DemoConfig(**flags)

