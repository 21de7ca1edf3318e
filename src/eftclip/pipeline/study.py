"""``eftclip study``: the paper's comparison on a labelled image folder (CIFAR-10), from one YAML.

What one study does (each step a resumable stage; see :mod:`eftclip.pipeline.stages`):

1. split the ImageFolder's training images into disjoint caption CSVs
   (:mod:`eftclip.pipeline.imagefolder_captions`): ``train``, ``pool``,
   ``reference`` (D_e) and ``detect``;
2. pre-train the clean CLIP on ``train`` (shared by every attack), and the
   oracle's labeller, a CLIP pre-trained only on ``reference``;
3. per attack: build the trigger (Trojaning-style optimises its patch against
   the clean CLIP on training images), poison ``poison_rate`` of ``train``,
   pre-train the poisoned CLIP, build the mixed detection set from ``detect``,
   detect triggers and affected labels with the ``reference`` oracle, curate
   the compact set from ``pool``, fine-tune with EftCLIP (curated set) and with
   CleanCLIP (random pool subset of the same size, and optionally a larger
   one), and evaluate CA/ASR of every model on the test folder;
4. RoCLIP (Table 4): pre-training with ``defense="roclip"`` on one attack's
   poisoned data;
5. the tables (Tables 2/3 per attack, Table 4, Table 5, detection, stage
   times) as Markdown, CSV and JSON, figures, ``report.md`` and ``metrics.json``.

Sharing between studies: every expensive stage runs in a folder of the cache
(``cache:`` in the YAML, default ``<out>/cache``) named ``<stage>-<hash>``,
where the hash covers everything the stage's numbers depend on (its settings
and the hashes of the stages it reads).  A second study with the same data
and model settings, pointed at the same cache, finds those folders finished
and reuses them (the tables say which stages were reused).  Two studies must
not run at the same time on one cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eftclip.errors import EftclipError
from eftclip.io import read_json, write_json, write_text
from eftclip.pipeline import steps
from eftclip.pipeline.stages import StageRunner

# trigger parameters for 32 px images; an attack's `params` in the YAML override them
ATTACK_DEFAULTS: dict[str, dict[str, Any]] = {
    "badnet": {"pattern": "noise", "size": 4, "position": "random"},
    "blended": {"alpha": 0.2, "pattern_size": 32},  # per-pixel noise at CIFAR's size
    "wanet": {"k": 4, "s": 0.5},  # WaNet's CIFAR-10 setting
    "trojannet": {"cell_size": 2, "position": "random"},  # 4x4 cells of 2 px: an 8 px patch
    "trojannn": {"size": 4, "position": "random", "steps": 100},
}

# recipe fields that change speed, not the numbers: left out of the cache keys
SPEED_ONLY = frozenset({"workers", "cpu_threads", "cache_images"})


@dataclass(frozen=True)
class DataSpec:
    """The labelled image folder and how its training images are split."""

    root: str = "../shared/data/cifar10"  # folder with train/<class>/* and test/<class>/* (relative to the cwd)
    classnames: str = "cifar10"  # display names: cifar10 | imagenet1k | JSON file (None-like "" = folder names)
    caption_templates: str = "cifar10"  # caption templates (eftclip.data.zeroshot.load_templates spec)
    train: int | None = None  # pre-training pairs; null = every image the other splits leave
    pool: int = 5000  # clean fine-tuning pool
    reference: int = 5000  # retained clean split D_e (the oracle's labeller trains on it only)
    detect: int = 1000  # held-out clean images for the mixed detection set
    eval_per_class: int | None = None  # evaluate on the first N test images per class (null = all)


@dataclass(frozen=True)
class PretrainRecipe:
    """How a CLIP is pre-trained from scratch on caption pairs."""

    model: str = "eftclip-tiny-rn"  # open_clip architecture (project tiny configs included)
    epochs: int = 10  # passes over the pairs
    batch_size: int = 128  # contrastive batch per process
    lr: float = 2e-3  # peak learning rate (cosine schedule)
    warmup: int = 100  # warm-up steps
    weight_decay: float = 0.1  # AdamW decay
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    workers: int = 0  # DataLoader workers (used when images are not cached in memory)
    cache_images: bool | None = None  # decode images once into memory; null = when <= 50,000 pairs
    cpu_threads: int | None = None  # torch intra-op threads on CPU (null = torch's default)


@dataclass(frozen=True)
class FinetuneSpec:
    """Fine-tuning of each poisoned CLIP (EftCLIP and CleanCLIP alike)."""

    size: int = 1000  # pairs: EftCLIP's curated set and CleanCLIP's random subset
    large_size: int = 0  # a larger CleanCLIP random subset (0 = skip)
    epochs: int = 10  # passes over the fine-tuning set
    batch_size: int = 64  # batch (the paper's 64)
    lr: float = 5e-4  # peak learning rate (tiny models from scratch need more than the paper's 1e-5)
    warmup: int = 10  # warm-up steps
    unaffected_ratio: float = 0.25  # R: weight of labels detection did not find affected
    precision: str = "auto"  # as in PretrainRecipe
    workers: int = 0  # as in PretrainRecipe
    cache_images: bool | None = None  # as in PretrainRecipe
    cpu_threads: int | None = None  # as in PretrainRecipe


@dataclass(frozen=True)
class OracleSpec:
    """The detection oracle: the ``reference`` backend (regions from pixels, named by a clean labeller).

    The labeller is a CLIP pre-trained only on the ``reference`` split (D_e):
    it never saw a poisoned pair, and it never saw the detection images.
    """

    labeller: PretrainRecipe = field(default_factory=lambda: PretrainRecipe(epochs=30))  # its pre-training
    regions: str = "grid"  # region proposals: grid | felzenszwalb | slic | foreground
    region_kwargs: dict = field(default_factory=dict)  # keyword arguments of the region method
    include_image: bool = True  # also score the whole image as one region (CIFAR objects fill the frame)
    min_area: float = 0.05  # kept regions' box area, fraction of the image
    max_area: float = 1.0  # largest kept region's box area
    max_regions: int = 16  # regions kept per image (largest first)


@dataclass(frozen=True)
class DetectSpec:
    """The mixed detection set and Algorithms 1/2's settings."""

    scenes: int = 1000  # images of the detection set (from the `detect` split)
    triggered_share: float = 0.5  # share of them carrying the trigger (ground truth kept)
    tau: int = 3  # CLIP's list length
    theta: float = 0.3  # oracle confidence threshold
    mode: str = "robust"  # robust | faithful (see eftclip.detection.algorithms)
    min_share: float = 0.66  # robust q: share of ranked images that leave a label unconfirmed to enter K
    min_count: int = 5  # robust m: least judged images for a label to enter K
    batch_size: int = 64  # images per detection batch


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the study."""

    name: str  # trigger name: badnet | blended | wanet | trojannet | trojannn
    params: dict = field(default_factory=dict)  # overrides of ATTACK_DEFAULTS[name]
    poison_rate: float | None = None  # share of training pairs poisoned; null = the study's


@dataclass(frozen=True)
class RoclipSpec:
    """RoCLIP pre-training on one attack's poisoned data (the paper's Table 4)."""

    attack: str | None = None  # which attack's poisoned data; null = the first attack; "" = skip RoCLIP
    pool_size: int = 1024  # captions kept in the matching pool
    period: int = 2  # match images to the pool every this many epochs


@dataclass(frozen=True)
class StudyConfig:
    """Everything ``eftclip study`` does; written to ``<out>/config.yaml``."""

    name: str = "study"  # a title for the report
    out: str = "runs/study"  # output folder (tables, figures, report.md, metrics.json)
    cache: str | None = None  # stage cache shared between studies; null = <out>/cache
    seed: int = 0  # every random choice derives from it
    device: str = "auto"  # auto | cpu | cuda
    target: str = "airplane"  # attack target: one of the evaluation classes
    poison_rate: float = 0.01  # default share of training pairs poisoned
    eval_templates: str = "cifar10"  # zero-shot prompt templates (evaluation and detection)
    progress: bool = True  # progress bars on stderr
    eval_workers: int = 0  # DataLoader workers that load and trigger evaluation images (GPU runs)
    eval_batch_size: int = 256  # evaluation batch
    cpu_threads: int | None = None  # torch intra-op threads for the whole study on CPU (null = torch's default; 1 is fastest on a busy machine)
    data: DataSpec = field(default_factory=DataSpec)  # data and splits
    model: PretrainRecipe = field(default_factory=PretrainRecipe)  # clean, poisoned and RoCLIP pre-training
    oracle: OracleSpec = field(default_factory=OracleSpec)  # detection oracle
    detect: DetectSpec = field(default_factory=DetectSpec)  # detection set and thresholds
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)  # EftCLIP / CleanCLIP fine-tuning
    attacks: tuple = ()  # AttackSpec entries, in table order
    roclip: RoclipSpec = field(default_factory=RoclipSpec)  # Table 4


# --------------------------------------------------------------------------- config


def config_from_mapping(values: dict, *, source: str = "study config") -> StudyConfig:
    """Build a :class:`StudyConfig` from YAML data; unknown keys and bad values name their place."""
    from eftclip.config import from_mapping

    values = dict(values)
    raw_attacks = values.pop("attacks", None)
    if raw_attacks is None:
        raise EftclipError(f"{source}: 'attacks' is required (a list of {{name, params, poison_rate}})")
    if not isinstance(raw_attacks, list) or not raw_attacks:
        raise EftclipError(f"{source}: 'attacks' must be a non-empty list")
    attacks = []
    for i, a in enumerate(raw_attacks):
        where = f"{source}: attacks[{i}]"
        if isinstance(a, str):
            a = {"name": a}
        if not isinstance(a, dict) or "name" not in a:
            raise EftclipError(f"{where}: expected a name or a mapping with 'name'")
        attacks.append(from_mapping(AttackSpec, a, source=where))
    cfg = from_mapping(StudyConfig, values, source=source)
    cfg = dataclasses.replace(cfg, attacks=tuple(attacks))
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike, **overrides: Any) -> StudyConfig:
    """Read a study YAML; non-None ``overrides`` (out, cache, device, progress) replace its values."""
    from eftclip.config import load_yaml

    values = load_yaml(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(values, source=str(path))


def validate(cfg: StudyConfig) -> None:
    from eftclip.attacks import TRIGGERS

    names = [a.name for a in cfg.attacks]
    for a in cfg.attacks:
        if a.name not in TRIGGERS:
            raise EftclipError(f"attacks: unknown attack '{a.name}' (known: {', '.join(sorted(TRIGGERS))})")
        rate = cfg.poison_rate if a.poison_rate is None else a.poison_rate
        if not 0 < rate < 1:
            raise EftclipError(f"attacks: {a.name}: poison_rate must be in (0, 1), got {rate}")
    if len(set(names)) != len(names):
        raise EftclipError(f"attacks: each attack may appear once (got {', '.join(names)})")
    if cfg.roclip.attack and cfg.roclip.attack not in names:
        raise EftclipError(f"roclip.attack: '{cfg.roclip.attack}' is not one of the study's attacks ({', '.join(names)})")
    if not 0 < cfg.detect.triggered_share < 1:
        raise EftclipError(f"detect.triggered_share must be in (0, 1), got {cfg.detect.triggered_share}")
    if cfg.detect.scenes > cfg.data.detect:
        raise EftclipError(f"detect.scenes ({cfg.detect.scenes}) exceeds the detect split (data.detect = {cfg.data.detect})")
    for size_name in ("size", "large_size"):
        size = getattr(cfg.finetune, size_name)
        if size > cfg.data.pool:
            raise EftclipError(f"finetune.{size_name} ({size}) exceeds the clean pool (data.pool = {cfg.data.pool})")
    root = Path(cfg.data.root)
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise EftclipError(f"data.root: {root / part} not found (expected an ImageFolder with train/ and test/)")


# --------------------------------------------------------------------------- stage cache


def stage_key(inputs: dict) -> str:
    """A short content hash of a stage's inputs (JSON, keys sorted)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _numbers(recipe: Any) -> dict:
    """A recipe's fields that decide its numbers (speed-only fields left out)."""
    return {k: v for k, v in dataclasses.asdict(recipe).items() if k not in SPEED_ONLY}


def _speed(recipe: Any) -> dict:
    return {k: getattr(recipe, k) for k in ("workers", "cache_images", "cpu_threads", "precision")}


class StageCache:
    """Folders ``<root>/<kind>-<hash>`` holding finished stages, shared between studies."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def run(self, kind: str, inputs: dict, fn: Callable[[Path], dict]) -> dict:
        """Return the stage's result, computing it in its folder unless a finished one exists.

        The result gains ``key``, ``cache`` (the folder), ``compute_seconds``
        (when it was made) and ``reused`` (True when found finished).
        """
        key = stage_key({"kind": kind, **inputs})
        folder = self.root / f"{kind}-{key}"
        marker = folder / "stage.json"
        if marker.exists():
            record = read_json(marker)
            return {**record["result"], "key": key, "cache": str(folder),
                    "compute_seconds": record["seconds"], "reused": True}
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "inputs.json", {"kind": kind, **inputs})
        t0 = time.perf_counter()
        result = steps._jsonable(fn(folder))
        seconds = time.perf_counter() - t0
        write_json(marker, {"kind": kind, "key": key, "seconds": seconds, "result": result})
        return {**result, "key": key, "cache": str(folder), "compute_seconds": seconds, "reused": False}


# --------------------------------------------------------------------------- the study


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_info() -> dict:
    """The machine a study ran on: CPU model, cores, memory, load, torch and GPU."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu, "nproc": usable, "memory_gib": None if mem_gib is None else round(mem_gib, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_study(cfg: StudyConfig, *, resume: bool = False, force: bool = False, command: str | None = None) -> dict:
    """Run (or continue) the study in ``cfg.out``; return the metrics written to ``metrics.json``.

    ``command``: the command line that started it, recorded in the report.
    """
    import torch

    previous = torch.get_num_threads()
    if cfg.cpu_threads:
        torch.set_num_threads(int(cfg.cpu_threads))
    try:
        return _run_study(cfg, resume=resume, force=force, command=command)
    finally:
        torch.set_num_threads(previous)


def _run_study(cfg: StudyConfig, *, resume: bool, force: bool, command: str | None) -> dict:
    from eftclip.config import to_dict, write_config
    from eftclip.data.zeroshot import load_classnames, load_templates

    validate(cfg)
    out = Path(cfg.out).resolve()
    cache = StageCache(cfg.cache if cfg.cache else out / "cache")
    roclip_attack = cfg.roclip.attack if cfg.roclip.attack is not None else cfg.attacks[0].name
    per_attack = 9 + (1 if cfg.finetune.large_size else 0)
    total = 3 + per_attack * len(cfg.attacks) + (2 if roclip_attack else 0) + 1
    runner = StageRunner(out, kind="study", config=to_dict(cfg), total=total, resume=resume, force=force)
    write_config(out / "config.yaml", cfg)
    t_start = time.perf_counter()
    machine = machine_info()  # at the start: the load average then says how busy the machine was

    root = Path(cfg.data.root).resolve()
    templates = load_templates(cfg.eval_templates)
    caption_templates = load_templates(cfg.data.caption_templates)
    classnames_spec = cfg.data.classnames or None
    classnames = load_classnames(classnames_spec) if classnames_spec else None
    device = _resolve_device(cfg.device)
    ctx = steps.Context(out=out, seed=cfg.seed, device=device, templates=list(templates), target=cfg.target,
                        progress=cfg.progress)
    sizes = {"train": cfg.data.train, "pool": cfg.data.pool, "reference": cfg.data.reference,
             "detect": cfg.data.detect}
    data_inputs = {"root": str(root / "train"), "sizes": sizes, "templates": caption_templates,
                   "classnames": classnames, "seed": cfg.seed}

    def make_data(folder: Path) -> dict:
        from eftclip.pipeline.imagefolder_captions import make_splits

        m = make_splits(root / "train", folder, sizes=sizes, templates=caption_templates,
                        classnames=classnames, seed=cfg.seed)
        return {"splits": {k: v["csv"] for k, v in m["splits"].items()},
                "counts": {k: v["n"] for k, v in m["splits"].items()}, "classnames_file": m["classnames_file"],
                "classnames": m["classnames"]}

    data = runner.run("data", lambda: cache.run("data", data_inputs, make_data),
                      label="split the training images into caption CSVs")
    if cfg.target not in data["classnames"]:
        raise EftclipError(f"target: '{cfg.target}' is not an evaluation class ({', '.join(data['classnames'])}); "
                           "ASR needs the target among the classes")
    eval_dir = str(root / "test")
    if cfg.data.eval_per_class:
        eval_dir = _eval_subset(cache, root / "test", cfg.data.eval_per_class)
    ctx.world = {"train_csv": data["splits"]["train"], "pool_csv": data["splits"]["pool"],
                 "reference_csv": data["splits"]["reference"], "detect_csv": data["splits"]["detect"],
                 "eval": eval_dir, "classnames": data["classnames_file"]}

    def pretrain_stage(kind: str, csv: str, recipe: PretrainRecipe, inputs: dict, name: str,
                       extra: dict | None = None) -> dict:
        def fn(folder: Path) -> dict:
            sub = dataclasses.replace(ctx, out=folder)
            args = {k: v for k, v in _speed(recipe).items()}
            args.update(extra or {})
            return steps.pretrain(sub, name, csv, recipe, train_args=args)

        return cache.run(kind, {**inputs, "recipe": _numbers(recipe), "seed": cfg.seed, **(extra or {})}, fn)

    clean = runner.run("train_clean", lambda: pretrain_stage(
        "pretrain", data["splits"]["train"], cfg.model, {"data": data["key"], "split": "train"}, "clean"),
        label="pre-train the clean CLIP")
    labeller = runner.run("train_labeller", lambda: pretrain_stage(
        "pretrain", data["splits"]["reference"], cfg.oracle.labeller, {"data": data["key"], "split": "reference"},
        "labeller"), label="pre-train the oracle's labeller on the reference split (D_e) only")

    eval_inputs = {"eval": eval_dir, "templates": templates, "target": cfg.target, "seed": cfg.seed,
                   "classnames": data["classnames"]}

    def evaluate_stage(model: dict, trig: dict) -> dict:
        def fn(folder: Path) -> dict:
            return steps.evaluate(ctx, model["checkpoint"], trig, num_workers=cfg.eval_workers,
                                  batch_size=cfg.eval_batch_size)

        return cache.run("evaluate", {**eval_inputs, "model": model["key"], "trigger": trig["key"]}, fn)

    attack_metrics: list[dict] = []
    records: dict[str, dict] = {}
    for spec in cfg.attacks:
        a = spec.name
        rate = cfg.poison_rate if spec.poison_rate is None else spec.poison_rate
        params = {**ATTACK_DEFAULTS.get(a, {}), **spec.params}

        def trigger_fn(folder: Path, a=a, params=params) -> dict:
            # the attacker optimises against a surrogate on training images, never the test set
            sub = dataclasses.replace(ctx, out=folder, eval_dir=str(root / "train"))
            return steps.build_trigger(sub, a, params, clean["checkpoint"])

        trig_inputs = {"attack": a, "params": params, "target": cfg.target, "seed": cfg.seed}
        if a == "trojannn" and "pattern_file" not in params:
            trig_inputs["surrogate"] = clean["key"]
        trig = runner.run(f"{a}/trigger", lambda: cache.run("trigger", trig_inputs, trigger_fn),
                          label=f"{a}: build the trigger")

        def poison_fn(folder: Path, trig=trig, rate=rate) -> dict:
            return steps.poison(dataclasses.replace(ctx, out=folder), data["splits"]["train"], trig, rate=rate,
                                name="train")

        poisoned_data = runner.run(f"{a}/poison", lambda: cache.run(
            "poison", {"data": data["key"], "trigger": trig["key"], "rate": rate, "seed": cfg.seed}, poison_fn),
            label=f"{a}: poison {rate:.1%} of the training pairs")
        poisoned = runner.run(f"{a}/train_poisoned", lambda: pretrain_stage(
            "pretrain", poisoned_data["csv"], cfg.model, {"poison": poisoned_data["key"]}, "poisoned"),
            label=f"{a}: pre-train the poisoned CLIP")

        def detect_set_fn(folder: Path, trig=trig) -> dict:
            return steps.detection_set(dataclasses.replace(ctx, out=folder), trig, scenes=cfg.detect.scenes,
                                       share=cfg.detect.triggered_share)

        detect_set = runner.run(f"{a}/detect_set", lambda: cache.run(
            "detect_set", {"data": data["key"], "trigger": trig["key"], "scenes": cfg.detect.scenes,
                           "share": cfg.detect.triggered_share, "seed": cfg.seed}, detect_set_fn),
            label=f"{a}: build the mixed detection set")
        oracle_args = {
            "labeller_checkpoint": labeller["checkpoint"], "vocabulary": list(data["classnames"]),
            "templates": list(templates), "regions": cfg.oracle.regions, "region_kwargs": dict(cfg.oracle.region_kwargs),
            "include_image": cfg.oracle.include_image, "min_area": cfg.oracle.min_area,
            "max_area": cfg.oracle.max_area, "max_regions": cfg.oracle.max_regions,
        }

        def detect_fn(folder: Path, poisoned=poisoned, detect_set=detect_set, oracle_args=oracle_args) -> dict:
            detect_args = {"device": device, "batch_size": cfg.detect.batch_size,
                           "min_share": cfg.detect.min_share, "min_count": cfg.detect.min_count}
            return steps.detect(dataclasses.replace(ctx, out=folder), poisoned["checkpoint"], detect_set["csv"], {},
                                cfg.detect, oracle_args={**oracle_args, "device": device}, detect_args=detect_args)

        detection = runner.run(f"{a}/detect", lambda: cache.run(
            "detect", {"model": poisoned["key"], "images": detect_set["key"], "labeller": labeller["key"],
                       "oracle": {k: v for k, v in oracle_args.items() if k != "labeller_checkpoint"},
                       "detect": {k: v for k, v in dataclasses.asdict(cfg.detect).items() if k != "batch_size"}, "templates": templates, "target": cfg.target},
            detect_fn), label=f"{a}: detect triggers and affected labels (reference oracle)")

        def curate_fn(folder: Path, detection=detection) -> dict:
            return steps.curate(dataclasses.replace(ctx, out=folder), detection["dir"], cfg.finetune)

        curated = runner.run(f"{a}/curate", lambda: cache.run(
            "curate", {"detection": detection["key"], "data": data["key"], "size": cfg.finetune.size,
                       "unaffected_ratio": cfg.finetune.unaffected_ratio, "seed": cfg.seed}, curate_fn),
            label=f"{a}: curate the compact fine-tuning set")

        def finetune_stage(name: str, csv: str, subset: int | None, inputs: dict, poisoned=poisoned) -> dict:
            def fn(folder: Path) -> dict:
                return steps.finetune(dataclasses.replace(ctx, out=folder), name, poisoned["checkpoint"], csv,
                                      cfg.finetune, subset=subset, train_args=_speed(cfg.finetune))

            recipe = {k: v for k, v in _numbers(cfg.finetune).items() if k not in ("size", "large_size", "unaffected_ratio")}
            return cache.run("finetune", {"model": poisoned["key"], **inputs, "subset": subset, "recipe": recipe,
                                          "seed": cfg.seed}, fn)

        defenses: dict[str, dict] = {}
        defenses["eftclip"] = runner.run(f"{a}/finetune_eftclip", lambda: finetune_stage(
            "eftclip", curated["csv"], None, {"data": curated["key"]}),
            label=f"{a}: fine-tune with EftCLIP ({cfg.finetune.size} curated pairs)")
        defenses["cleanclip"] = runner.run(f"{a}/finetune_cleanclip", lambda: finetune_stage(
            "cleanclip", data["splits"]["pool"], cfg.finetune.size, {"data": data["key"], "split": "pool"}),
            label=f"{a}: fine-tune with CleanCLIP ({cfg.finetune.size} random pairs)")
        if cfg.finetune.large_size:
            defenses["cleanclip_large"] = runner.run(f"{a}/finetune_cleanclip_large", lambda: finetune_stage(
                "cleanclip_large", data["splits"]["pool"], cfg.finetune.large_size,
                {"data": data["key"], "split": "pool"}),
                label=f"{a}: fine-tune with CleanCLIP ({cfg.finetune.large_size} random pairs)")

        def evaluate_all(trig=trig, poisoned=poisoned, defenses=defenses) -> dict:
            models = {"clean": clean, "poisoned": poisoned, **defenses}
            return {name: evaluate_stage(m, trig) for name, m in models.items()}

        evals = runner.run(f"{a}/evaluate", evaluate_all, label=f"{a}: evaluate CA and ASR on the test images")
        metrics = {
            "attack": {"name": a, "params": trig["params"]},
            "target": cfg.target,
            "seed": cfg.seed,
            "poison_rate": rate,
            "poisoned_pairs": poisoned_data["poisoned"],
            "clean": steps.summary(evals["clean"]),
            "poisoned": steps.summary(evals["poisoned"]),
            "detection": steps.detection_summary(detection, cfg.target),
            "defenses": {
                name: {**steps.summary(evals[name]), "finetune_pairs": d["pairs"],
                       "seconds": d["compute_seconds"], "reused": d["reused"]}
                for name, d in defenses.items()
            },
            "pretrain_seconds": {"clean": clean["compute_seconds"], "poisoned": poisoned["compute_seconds"]},
        }
        attack_metrics.append(metrics)
        records[a] = {"trigger": trig, "poisoned_data": poisoned_data, "poisoned": poisoned, "detection": detection,
                      "curated": curated, "defenses": defenses, "evals": evals}

    roclip_metrics = None
    if roclip_attack:
        rec = records[roclip_attack]
        roclip_extra = {"defense": "roclip", "roclip_pool_size": cfg.roclip.pool_size,
                        "roclip_period": cfg.roclip.period}
        roclip = runner.run("roclip/train", lambda: pretrain_stage(
            "pretrain", rec["poisoned_data"]["csv"], cfg.model, {"poison": rec["poisoned_data"]["key"]}, "roclip",
            extra=roclip_extra), label=f"RoCLIP: pre-train on the {roclip_attack}-poisoned data")
        roclip_eval = runner.run("roclip/evaluate", lambda: evaluate_stage(roclip, rec["trigger"]),
                                 label="RoCLIP: evaluate CA and ASR")
        m = next(x for x in attack_metrics if x["attack"]["name"] == roclip_attack)
        roclip_metrics = {"attack": roclip_attack, "poisoned": m["poisoned"],
                          "roclip": {**steps.summary(roclip_eval), "seconds": roclip["compute_seconds"]},
                          "eftclip": m["defenses"]["eftclip"], "cleanclip": m["defenses"]["cleanclip"]}

    stage_table = _stage_rows(out, cfg)
    metrics = {
        "name": cfg.name,
        "target": cfg.target,
        "seed": cfg.seed,
        "device": device,
        "command": command,
        "machine": machine,
        "data": {"root": str(root), "splits": data["counts"], "eval": eval_dir},
        "attacks": attack_metrics,
        "roclip": roclip_metrics,
        "stages": stage_table,
        "seconds": sum(r["compute_seconds"] for r in stage_table),
        "wall_seconds_this_invocation": time.perf_counter() - t_start,
    }
    runner.run("report", lambda: write_study_report(out, metrics, records),
               label="write the tables, figures and report.md")
    write_json(out / "metrics.json", metrics)
    return metrics


def _eval_subset(cache: StageCache, test_root: Path, per_class: int) -> str:
    """An ImageFolder of the first ``per_class`` test images per class, as symlinks (nothing copied)."""
    from eftclip.data.zeroshot import ImageFolderSet

    def fn(folder: Path) -> dict:
        ds = ImageFolderSet(test_root, max_per_class=per_class)
        for path, c in ds.samples:
            link = folder / "images" / ds.classes[c] / Path(path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path)
        return {"dir": str(folder / "images"), "n": len(ds)}

    return cache.run("eval_subset", {"root": str(test_root), "per_class": per_class}, fn)["dir"]


def _stage_rows(out: Path, cfg: StudyConfig) -> list[dict]:
    """One row per finished stage: its compute seconds (when made) and whether this study reused it."""
    rows = []
    stages = out / "stages"
    for path in sorted(stages.rglob("*.json"), key=lambda p: p.stat().st_mtime):
        rec = read_json(path)
        name = rec.get("stage", path.stem)
        if name == "report":
            continue
        result = rec.get("result")
        parts = _cache_parts(result)
        compute = sum(p["compute_seconds"] for p in parts) if parts else rec.get("seconds", 0.0)
        reused = bool(parts) and all(p["reused"] for p in parts)
        rows.append({"stage": name, "compute_seconds": float(compute), "wall_seconds": float(rec.get("seconds", 0.0)),
                     "reused": reused})
    return rows


def _cache_parts(result: Any) -> list[dict]:
    if isinstance(result, dict):
        if "compute_seconds" in result and "reused" in result:
            return [result]
        return [p for v in result.values() for p in _cache_parts(v)]
    return []


# --------------------------------------------------------------------------- report


def write_study_report(out: Path, metrics: dict, records: dict) -> dict:
    """Write ``tables/*`` (Markdown, CSV, JSON), ``figures/*.png`` and ``report.md`` under ``out``."""
    import shutil

    from eftclip.pipeline.report import attack_table, detection_table, results_table, verdict
    from eftclip.reporting.plots import attack_panel, ca_asr_bars
    from eftclip.reporting.tables import Table, write_table

    tables, figures = out / "tables", out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    target = metrics["target"]
    for m in metrics["attacks"]:
        a = m["attack"]["name"]
        t = results_table(m, f"Tables 2/3 ({a}): CA and ASR on the test images, target '{target}', "
                             f"{m['poisoned_pairs']} poisoned pairs ({m['poison_rate']:.1%})")
        write_table(t, tables / f"results_{a}")
        det = detection_table(m)
        det.title = f"Trigger detection ({a})"
        write_table(det, tables / f"detection_{a}")
        bars = {"Clean": m["clean"], "Poisoned": m["poisoned"]}
        for name, d in m["defenses"].items():
            bars[{"eftclip": "EftCLIP", "cleanclip": "CleanCLIP", "cleanclip_large": "CleanCLIP (large)"}[name]] = d
        ca_asr_bars(bars, figures / f"ca_asr_{a}.png", title=f"{a}: CA and ASR")
        fig7 = Path(records[a]["detection"]["dir"]) / "figure7.png"
        if fig7.exists():
            shutil.copyfile(fig7, figures / f"figure7_{a}.png")
        sections += [f"## {a}", "", t.markdown(), *verdict(m), "", det.markdown(),
                     f"![{a}](figures/ca_asr_{a}.png)", ""]

    t5 = attack_table(metrics["attacks"])
    write_table(t5, tables / "table5_attacks")
    attack_panel([{"attack": m["attack"]["name"], "poisoned_asr": m["poisoned"]["asr"],
                   "eftclip_asr": m["defenses"].get("eftclip", {}).get("asr"),
                   "cleanclip_asr": m["defenses"].get("cleanclip", {}).get("asr")} for m in metrics["attacks"]],
                 figures / "table5_attacks.png")

    goal = Table(title="Goal check: EftCLIP ASR <= 10% with CA within 2 points of the poisoned model, "
                       "and lower ASR than CleanCLIP at the same size",
                 columns=["Attack", "pairs", "EftCLIP s", "CleanCLIP s", "ASR <= 10%", "CA within 2 pts",
                          "beats CleanCLIP"])
    for m in metrics["attacks"]:
        e, c, p = m["defenses"]["eftclip"], m["defenses"]["cleanclip"], m["poisoned"]
        goal.add(**{"Attack": m["attack"]["name"], "pairs": e["finetune_pairs"], "EftCLIP s": round(e["seconds"], 1),
                    "CleanCLIP s": round(c["seconds"], 1), "ASR <= 10%": _yes(e["asr"] is not None and e["asr"] <= 0.10),
                    "CA within 2 pts": _yes(e["ca"] is not None and p["ca"] is not None and abs(e["ca"] - p["ca"]) <= 0.02),
                    "beats CleanCLIP": _yes(e["asr"] is not None and c["asr"] is not None and e["asr"] < c["asr"])})
    write_table(goal, tables / "goal")

    det_all = Table(title="Trigger detection per attack (reference oracle, labeller trained on D_e only)",
                    columns=["Attack", "triggers K", "target found", "detection rate", "precision",
                             "false-positive rate"],
                    percent=["detection rate", "precision", "false-positive rate"])
    for m in metrics["attacks"]:
        d = m["detection"]
        det_all.add(**{"Attack": m["attack"]["name"], "triggers K": ", ".join(d["triggers"]) or "(none)",
                       "target found": d["target_found"], "detection rate": d["detection_rate"],
                       "precision": d["precision"], "false-positive rate": d["false_positive_rate"]})
    write_table(det_all, tables / "detection")

    parts = ["# " + metrics["name"], "",
             f"Target **{target}**; data `{metrics['data']['root']}` (splits {metrics['data']['splits']}); "
             f"evaluation `{metrics['data']['eval']}`; device {metrics['device']}; "
             f"compute time of all stages {metrics['seconds']:.0f} s.", "",
             "CA: top-1 zero-shot accuracy on the clean test images. ASR: share of triggered test images whose "
             "true class is not the target that the model assigns to the target.", "",
             t5.markdown(), "![Table 5](figures/table5_attacks.png)", "", goal.markdown(), det_all.markdown()]
    mach = metrics.get("machine") or {}
    head = ["## Command and machine", "",
            f"Command: `{metrics.get('command') or '(Python API)'}`", "",
            f"Machine: {mach.get('cpu')}, {mach.get('nproc')} usable cores (nproc), {mach.get('memory_gib')} GiB "
            f"memory, load average at start {mach.get('load_average')}, GPU {mach.get('gpu') or 'none'}; "
            f"{mach.get('platform')}, Python {mach.get('python')}, torch {mach.get('torch')}.", ""]
    parts[2:2] = head
    r = metrics.get("roclip")
    if r:
        t4 = Table(title=f"Table 4: against RoCLIP ({r['attack']} poisoned data)",
                   columns=["Model", "CA", "ASR", "seconds"], percent=["CA", "ASR"])
        t4.add(Model="Poisoned CLIP", CA=r["poisoned"]["ca"], ASR=r["poisoned"]["asr"])
        t4.add(Model="RoCLIP (pre-training defense)", CA=r["roclip"]["ca"], ASR=r["roclip"]["asr"],
               seconds=round(r["roclip"]["seconds"], 1))
        t4.add(Model="CleanCLIP (same size)", CA=r["cleanclip"]["ca"], ASR=r["cleanclip"]["asr"],
               seconds=round(r["cleanclip"]["seconds"], 1))
        t4.add(Model="EftCLIP", CA=r["eftclip"]["ca"], ASR=r["eftclip"]["asr"], seconds=round(r["eftclip"]["seconds"], 1))
        write_table(t4, tables / "table4_roclip")
        parts += [t4.markdown()]
    st = Table(title="Stage times (compute seconds when the stage was made; reused = found finished in the cache)",
               columns=["stage", "compute seconds", "this run seconds", "reused"])
    for row in metrics["stages"]:
        st.add(**{"stage": row["stage"], "compute seconds": round(row["compute_seconds"], 1),
                  "this run seconds": round(row["wall_seconds"], 1), "reused": _yes(row["reused"])})
    write_table(st, tables / "stages")
    parts += sections + [st.markdown()]
    write_text(out / "report.md", "\n".join(parts) + "\n")
    # README.md: how these files were made (command, machine, stage times), for a results folder
    readme = [f"# {metrics['name']}: results", "",
              "Made by the command below, run from the repository root; running it again remakes these files "
              "(finished stages are reused from the cache; `--force` starts the folder over).", "",
              *head, f"Total compute time of the stages: {metrics['seconds']:.0f} s "
              f"({metrics['seconds'] / 60:.1f} min).", "", st.markdown(),
              "Tables: `tables/*.md|csv|json` (Table 5 `table5_attacks`, Table 4 `table4_roclip`, Tables 2/3 "
              "`results_<attack>`, `detection`, `goal`, `stages`); figures: `figures/`; all numbers: "
              "`metrics.json`; the full report with every table: [report.md](report.md).", ""]
    write_text(out / "README.md", "\n".join(readme))
    return {"report": str(out / "report.md"), "tables": str(tables), "figures": str(figures)}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
