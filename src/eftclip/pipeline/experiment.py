"""One staged experiment: a matrix of attacks x seeds (x targets) on one data source.

Each cell is the whole story: poison, pre-train, detect, curate, fine-tune every defense,
evaluate.  Per seed, the source's data, the clean CLIP and the oracle are made once and
shared by every attack.  Every stage is cached by the content hash of what its numbers
depend on (:mod:`eftclip.pipeline.plan`), so a rerun recomputes nothing and a killed run
continues where it stopped.  ``eftclip demo`` is the single-attack, single-seed preset;
``eftclip study --config`` runs any preset or user YAML.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eftclip.pipeline.goals import GoalThresholds
from eftclip.pipeline.plan import Node, Plan
from eftclip.pipeline.recipes import (
    DEFAULT_DEFENSES,
    AttackSpec,
    DetectRecipe,
    FinetuneRecipe,
    PretrainRecipe,
    RoclipSpec,
    key_fields,
    on_device,
    speed_fields,
)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one experiment does; written to ``<out>/config.yaml``."""

    name: str = "eftclip experiment"  # a title for the report
    out: str = "runs/experiment"  # output folder (report.md, metrics.json, summary.json, tables, figures)
    cache: str | None = None  # stage cache, shareable between experiments; null = <out>/cache
    source: dict = field(default_factory=lambda: {"kind": "world"})  # data source: {kind: world|folder, ...settings}
    seeds: tuple = (0,)  # one cell per seed (and attack, and target); each seed draws its own data and models
    target: str = "umbrella"  # attack target: one of the evaluation classes
    targets: tuple = ()  # further targets: the matrix also runs over these (empty = only `target`)
    attacks: tuple = (AttackSpec(name="badnet"),)  # AttackSpec entries, in table order
    poison_rate: float = 0.03  # share of training pairs poisoned (an attack's own rate wins)
    templates: Any = None  # zero-shot prompts: a list, or a load_templates spec; null = the source's
    pretrain: PretrainRecipe = field(default_factory=PretrainRecipe)  # clean, poisoned and RoCLIP pre-training
    detect: DetectRecipe = field(default_factory=DetectRecipe)  # detection set and thresholds
    finetune: FinetuneRecipe = field(default_factory=FinetuneRecipe)  # fine-tuning shared by the defenses
    budget: int = 1000  # fine-tuning pairs of a defense at scale 1
    defenses: tuple = DEFAULT_DEFENSES  # DefenseSpec entries, in table order
    roclip: RoclipSpec = field(default_factory=RoclipSpec)  # the paper's Table 4 (off unless an attack is named)
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int | None = 1  # torch threads per stage on CPU: one per process is fastest on 2 shared cores
    workers: int = 2  # processes for independent stages (1 = one after another, here)
    train_procs: int = 1  # processes per training stage (torchrun --nproc_per_node); >1 runs each pretrain/finetune as one torchrun job (one per GPU), the recipe's batch_size split across them
    progress: bool = True  # progress bars on stderr
    eval_workers: int = 0  # DataLoader workers that load and trigger evaluation images (GPU runs)
    eval_batch_size: int = 256  # evaluation batch
    quick: bool = False  # a reduced preset: only the direction of each effect is meaningful
    time_goal_s: float | None = 900.0  # goal: the whole run within this many seconds of wall time (null = none)
    goals: GoalThresholds = field(default_factory=GoalThresholds)  # the bars of the goals tables


# --------------------------------------------------------------------------- the plan


@dataclass
class Cell:
    """One attack x seed x target of the matrix, and the ids of its stages."""

    attack: AttackSpec  # the attack of this cell
    seed: int  # its seed (data, models and draws derive from it)
    target: str  # its target label
    prefix: str  # stage-id prefix, e.g. "s0/badnet"
    ids: dict = field(default_factory=dict)  # role -> stage id

    @property
    def name(self) -> str:
        return self.prefix.replace("/", "-")


class _CellPlan:
    """What a set builder sees of a cell (see eftclip.pipeline.defenses.CellPlan)."""

    def __init__(self, plan: Plan, cell: Cell, source: dict):
        self.plan, self.cell, self.source = plan, cell, source
        self.prefix, self.seed = cell.prefix, cell.seed

    def add(self, node: Node) -> str:
        return self.plan.add(node)

    def data_id(self) -> str:
        return self.cell.ids["data"]

    def detection_id(self) -> str:
        return self.cell.ids["detect"]

    def detect_set_id(self) -> str:
        return self.cell.ids["detect_set"]

    def recovered_id(self) -> str:
        return self.cell.ids["recover"]


def _procs(cfg: ExperimentConfig) -> dict:
    """A training stage's share of the key from ``train_procs``: N processes give close, not equal, numbers
    (BatchNorm normalises over each rank's share of the batch), so N > 1 is cached apart; 1 adds nothing."""
    return {"procs": cfg.train_procs} if cfg.train_procs > 1 else {}


def build_plan(cfg: ExperimentConfig, source: Any, templates: list[str], cache: Path) -> tuple[Plan, list[Cell]]:
    """Every stage of the experiment, in a runnable order, and its cells."""
    from eftclip.pipeline.sources import source_mapping

    plan = Plan(cache)
    src = source_mapping(source)
    cfg = _resolved_precision(cfg)
    shared = {seed: _seed_stages(plan, cfg, src, seed) for seed in cfg.seeds}
    cells: list[Cell] = []
    # attack-major order: a run cut short has whole attacks (every seed) rather than whole seeds
    for attack in cfg.attacks:
        for target in (cfg.target, *cfg.targets):
            for seed in cfg.seeds:
                prefix = f"s{seed}/{attack.name}" + (f"/{target}" if cfg.targets else "")
                cell = Cell(attack=attack, seed=seed, target=target, prefix=prefix, ids=dict(shared[seed]))
                _cell_stages(plan, cfg, src, source, templates, cell)
                cells.append(cell)
    return plan, cells


def _seed_stages(plan: Plan, cfg: ExperimentConfig, src: dict, seed: int) -> dict:
    data = plan.add(Node(id=f"s{seed}/data", kind="data", task="prepare_data", params={"source": src, "seed": seed},
                         label="make the data splits"))
    clean = plan.add(Node(id=f"s{seed}/train_clean", kind="pretrain", task="pretrain",
                          params={"recipe": key_fields(cfg.pretrain), "seed": seed, "name": "clean", "csv": "train_csv",
                                  **_procs(cfg)},
                          needs={"data": data}, speed=speed_fields(cfg.pretrain), label="pre-train the clean CLIP"))
    oracle = plan.add(Node(id=f"s{seed}/oracle", kind="oracle", task="train_oracle",
                           params={"source": src, "seed": seed}, needs={"data": data},
                           label="train the oracle (clean reference split only)"))
    return {"data": data, "clean": clean, "oracle": oracle}


def _cell_stages(plan: Plan, cfg: ExperimentConfig, src: dict, source: Any, templates: list[str], cell: Cell) -> None:
    a, seed, target, p = cell.attack, cell.seed, cell.target, cell.prefix
    ids = cell.ids
    rate = cfg.poison_rate if a.poison_rate is None else a.poison_rate
    params = {**source.attack_defaults.get(a.name, {}), **a.params}
    surrogate = _needs_surrogate(a.name, params)
    needs = {"data": ids["data"], **({"surrogate": ids["clean"]} if surrogate else {})}
    ids["trigger"] = plan.add(Node(id=f"{p}/trigger", kind="trigger", task="build_trigger", needs=needs,
                                   params={"source": src, "attack": a.name, "params": params, "target": target,
                                           "seed": seed, "templates": templates,
                                           **({"surrogate_images": "train"} if surrogate else {})},
                                   label=f"build the {a.name} trigger"))
    ids["poison"] = plan.add(Node(id=f"{p}/poison", kind="poison", task="poison",
                                  params={"source": src, "target": target, "rate": rate, "seed": seed},
                                  needs={"data": ids["data"], "trigger": ids["trigger"]},
                                  label=f"poison {rate:.1%} of the training pairs"))
    ids["poisoned"] = plan.add(Node(id=f"{p}/train_poisoned", kind="pretrain", task="pretrain",
                                    params={"recipe": key_fields(cfg.pretrain), "seed": seed, "name": "poisoned",
                                            "csv": "csv", **_procs(cfg)},
                                    needs={"data": ids["poison"]}, speed=speed_fields(cfg.pretrain),
                                    label="pre-train the poisoned CLIP"))
    _detection_stages(plan, cfg, src, templates, cell,
                      cfg.detect.theta if cfg.detect.theta is not None else source.theta)
    _defense_stages(plan, cfg, src, cell)
    _evaluation_stages(plan, cfg, templates, cell)


def _needs_surrogate(attack: str, params: dict) -> bool:
    return attack == "trojannn" and "pattern_file" not in params


def _detection_stages(plan: Plan, cfg: ExperimentConfig, src: dict, templates: list[str], cell: Cell,
                      theta: float) -> None:
    ids, p, d = cell.ids, cell.prefix, dataclasses.replace(cfg.detect, theta=theta)
    ids["detect_set"] = plan.add(Node(
        id=f"{p}/detect_set", kind="detect_set", task="detection_set",
        params={"scenes": d.scenes, "share": d.triggered_share, "seed": cell.seed, "target": cell.target},
        needs={"data": ids["data"], "trigger": ids["trigger"]}, label="build the mixed detection set"))
    recipe = {k: v for k, v in dataclasses.asdict(d).items() if k != "batch_size"}
    ids["detect"] = plan.add(Node(
        id=f"{p}/detect", kind="detect", task="detect",
        params={"source": src, "recipe": recipe, "templates": templates, "target": cell.target, "seed": cell.seed},
        needs={"data": ids["data"], "model": ids["poisoned"], "images": ids["detect_set"], "oracle": ids["oracle"]},
        speed={"batch_size": d.batch_size}, label="detect triggers and affected labels"))
    ids["recover"] = plan.add(Node(
        id=f"{p}/recover_trigger", kind="recover", task="recover_cell_trigger",
        params={"seed": cell.seed, "method": "auto"},
        needs={"detection": ids["detect"], "model": ids["poisoned"], "data": ids["data"]},
        label="recover the trigger (mask and pattern) from the flagged images"))
    ids["trigger_iou"] = plan.add(Node(
        id=f"{p}/trigger_iou", kind="trigger_iou", task="cell_trigger_iou", params={"images": 64, "seed": cell.seed},
        needs={"recovered": ids["recover"], "true": ids["trigger"], "data": ids["data"]},
        label="score the recovered mask against the true trigger (scoring only)"))


def _defense_stages(plan: Plan, cfg: ExperimentConfig, src: dict, cell: Cell) -> None:
    from eftclip.pipeline.defenses import SET_BUILDERS

    view = _CellPlan(plan, cell, src)
    for spec in cfg.defenses:
        size = int(round(spec.scale * cfg.budget))
        set_id = SET_BUILDERS[spec.set](view, spec, size)
        cell.ids[f"set:{spec.name}"] = set_id
        recipe = dataclasses.replace(cfg.finetune, **{k: getattr(spec, k) for k in ("objective", "lr", "epochs")
                                                      if getattr(spec, k) is not None})
        train_args = {"anchor_weight": spec.anchor_weight} if spec.anchor_weight else {}
        cell.ids[f"defense:{spec.name}"] = plan.add(Node(
            id=f"{cell.prefix}/finetune_{spec.name}", kind="finetune", task="finetune",
            params={"recipe": key_fields(recipe), "seed": cell.seed, "name": spec.name, "train_args": train_args,
                    **_procs(cfg)},
            needs={"model": cell.ids["poisoned"], "set": set_id}, speed=speed_fields(recipe),
            label=f"fine-tune: {spec.name} ({size} pairs)"))
    if cfg.roclip.attack == cell.attack.name:
        r = cfg.roclip
        cell.ids["defense:roclip"] = plan.add(Node(
            id=f"{cell.prefix}/train_roclip", kind="pretrain", task="pretrain",
            params={"recipe": key_fields(cfg.pretrain), "seed": cell.seed, "name": "roclip", "csv": "csv",
                    "train_args": {"defense": "roclip", "roclip_pool_size": r.pool_size, "roclip_period": r.period}},
            needs={"data": cell.ids["poison"]}, speed=speed_fields(cfg.pretrain), label="pre-train with RoCLIP"))


def _evaluation_stages(plan: Plan, cfg: ExperimentConfig, templates: list[str], cell: Cell) -> None:
    models = {"clean": cell.ids["clean"], "poisoned": cell.ids["poisoned"],
              **{k.split(":", 1)[1]: v for k, v in cell.ids.items() if k.startswith("defense:")}}
    for name, model in models.items():
        cell.ids[f"eval:{name}"] = plan.add(Node(
            id=f"{cell.prefix}/evaluate_{name}", kind="evaluate", task="evaluate",
            params={"templates": templates, "target": cell.target, "seed": cell.seed},
            needs={"data": cell.ids["data"], "model": model, "trigger": cell.ids["trigger"]},
            speed={"eval_workers": cfg.eval_workers, "eval_batch_size": cfg.eval_batch_size},
            label=f"evaluate CA and ASR: {name}"))


# --------------------------------------------------------------------------- running it


def resolve_templates(cfg: ExperimentConfig, source: Any) -> list[str]:
    from eftclip.data.zeroshot import load_templates

    spec = cfg.templates if cfg.templates is not None else source.templates
    return list(spec) if isinstance(spec, (list, tuple)) else load_templates(spec)


def run_experiment(cfg: ExperimentConfig, *, resume: bool = False, force: bool = False,
                   command: str | None = None, plan_only: bool = False, stream=None) -> dict:
    """Run (or continue) the experiment in ``cfg.out``; return the metrics written to ``metrics.json``.

    ``plan_only``: return ``{"plan": [...]}`` (each stage, its inputs and cache folder) and run nothing.
    """
    from eftclip.pipeline.checks import validate
    from eftclip.pipeline.sources import build_source

    source = build_source(cfg.source)
    validate(cfg, source)
    templates = resolve_templates(cfg, source)
    out = Path(cfg.out)
    cache = Path(cfg.cache) if cfg.cache else out / "cache"
    plan, cells = build_plan(cfg, source, templates, cache)
    if plan_only:
        return {"plan": plan.describe()}
    return _run(cfg, plan, cells, out, resume=resume, force=force, command=command, stream=stream)


def _run(cfg: ExperimentConfig, plan: Plan, cells: list[Cell], out: Path, *, resume: bool, force: bool,
         command: str | None, stream) -> dict:
    from eftclip.config import to_dict, write_config
    from eftclip.io import write_json
    from eftclip.pipeline.executor import execute
    from eftclip.pipeline.metrics import collect
    from eftclip.pipeline.report import write_experiment_report
    from eftclip.pipeline.run_folder import claim_folder
    from eftclip.pipeline.machine import machine_info

    # settings that change how a run goes (or how it is judged), not its numbers, may differ when a run is continued
    run_only = ("out", "cache", "device", "workers", "train_procs", "progress", "cpu_threads", "eval_workers",
                "eval_batch_size", "goals")
    claim_folder(out, kind="experiment", config={k: v for k, v in to_dict(cfg).items() if k not in run_only},
                 resume=resume, force=force)
    write_config(out / "config.yaml", cfg)
    machine = machine_info()
    t0 = time.perf_counter()
    # train_procs also rides in env: the training stages run with it (their keys hold it, see _procs)
    env = {"device": _device(cfg.device), "progress": cfg.progress, "train_procs": cfg.train_procs}
    before = {nid for nid in plan.nodes if plan.done(nid)}
    try:
        results = execute(plan, env=env, workers=cfg.workers, threads=cfg.cpu_threads, stream=stream)
    finally:  # an interrupted run still counts its time and the stages it finished
        timing = _record_timing(out / "timing.json", plan, before, time.perf_counter() - t0)
    complete = set(timing["stages_run"]) >= set(plan.keys.values())
    metrics = collect(cfg, plan, cells, results, machine=machine, command=command,
                      wall_seconds=timing["wall_seconds"] if complete else None)
    from eftclip.io import portable_paths

    # committed results must not carry this machine's folders: paths relative to where the run started
    metrics = portable_paths(metrics, Path.cwd())
    write_experiment_report(out, metrics, plan=plan, cells=cells, results=results)
    write_json(out / "metrics.json", metrics)
    return metrics


def _record_timing(path: Path, plan: Plan, before: set, seconds: float) -> dict:
    """Add this invocation's wall time and the stages it finished (by cache key) to ``timing.json``.

    Wall time counts only what ran from this folder: stages found in a shared cache took theirs elsewhere.
    """
    from eftclip.io import read_json, write_json

    timing = read_json(path) if path.exists() else {"wall_seconds": 0.0, "stages_run": []}
    if not isinstance(timing.get("stages_run"), list):
        timing["stages_run"] = []
    ran = {plan.keys[nid] for nid in plan.nodes if nid not in before and plan.done(nid)}
    timing["wall_seconds"] += seconds
    timing["stages_run"] = sorted(set(timing["stages_run"]) | ran)
    write_json(path, timing)
    return timing


def _resolved_precision(cfg: ExperimentConfig) -> ExperimentConfig:
    """Both training recipes as trained on the run's device (:func:`recipes.on_device`)."""
    device = _device(cfg.device)
    return dataclasses.replace(cfg, pretrain=on_device(cfg.pretrain, device), finetune=on_device(cfg.finetune, device))


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
