"""``eftclip defend``: detect, look again, recover the trigger, curate and repair, on the user's own model.

The stages are the pipeline's own (:mod:`eftclip.pipeline.tasks`, plus the few of
:mod:`eftclip.pipeline.defend_tasks`), planned as content-hashed :class:`Node` s under
``<out>/stages`` and run by :func:`~eftclip.pipeline.executor.execute`: a rerun recomputes
nothing.  The plan has two phases: detection, then (only when K is not empty) the rest.
Every input is checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from eftclip.config import cli_flag
from eftclip.detection.runner import DetectConfig
from eftclip.detection.trigger_recovery import DEFAULT_METHOD
from eftclip.errors import EftclipError
from eftclip.pipeline.experiment import ExperimentConfig
from eftclip.pipeline.plan import Node, Plan
from eftclip.pipeline.recipes import DEFAULT_DEFENSES, FinetuneRecipe, key_fields, on_device

# the repair is the pipeline's "eftclip" defense: its set builder's options and its recipe
EFTCLIP_DEFENSE = next(d for d in DEFAULT_DEFENSES if d.name == "eftclip")


@dataclass(frozen=True)
class DefendConfig:
    """Everything ``eftclip defend`` does; written (paths relative to ``out``) to ``<out>/config.yaml``."""

    checkpoint: str | None = None  # the suspect CLIP: .safetensors with its side file (or a foreign file with --model)
    model: str | None = None  # open_clip architecture or hf-hub:org/name (with --pretrained, or a foreign --checkpoint)
    pretrained: str | None = None  # open_clip tag (openai, laion2b_s34b_b79k), hf-hub:org/name, or a weights file
    data: str | None = None  # the images to examine: a caption CSV/TSV/webdataset or a folder of images
    pool: str | None = None  # clean caption table the repair set is drawn from
    oracle: str | None = None  # oracle backend: reference, onnx-detector, fastsam, owlv2, grounding-dino
    oracle_args: dict = field(default_factory=dict, metadata=cli_flag("--oracle-arg"))  # oracle constructor arguments
    oracle_model: str | None = None  # the oracle's weights: a folder, file or hub id
    vocab: str = DetectConfig.vocab  # label file (.txt / .json), or "mined" from the data's captions
    templates: str | None = None  # prompt templates (openai, simple, cifar10 or a JSON list); null = detection's
    tau: int = DetectConfig.tau  # length of CLIP's label list
    theta: float = DetectConfig.theta  # oracle confidence threshold
    min_share: float = DetectConfig.min_share  # robust q: unconfirmed share for a label to enter K
    min_count: int = DetectConfig.min_count  # robust m: least top-1 images for a label to enter K
    second_look_theta: float | None = None  # oracle threshold of the second look; null = theta
    recovery: str = DEFAULT_METHOD  # trigger recovery: auto (occlusion, else optimisation) | occlusion | optimise
    size: int = ExperimentConfig.budget  # pairs of the repair set (unlearning pairs included)
    epochs: int | None = None  # fine-tuning passes; null = the eftclip defense's recipe
    eval: str | None = None  # zero-shot ImageFolder for CA and ASR before and after (with classes)
    classes: str | None = None  # its class names: cifar10, imagenet1k or a JSON file
    true_attack: str | None = None  # scoring only: the true trigger's name, when a study knows it
    true_attack_params: dict = field(default_factory=dict, metadata=cli_flag("--true-attack-param"))  # scoring only: its parameters
    out: str | None = None  # output folder: verdict.txt, report.md, metrics.json, trigger/, repaired.safetensors
    seed: int = 0  # every random choice (pool draws, recovery, fine-tuning order) derives from it
    device: str = "cpu"  # torch device
    batch_size: int = 32  # detection images per batch (speed only)
    progress: bool = True  # progress bars on stderr


@dataclass(frozen=True)
class Resolved:
    """What :func:`check` found: absolute paths, the weights file and what the stages share."""

    cfg: DefendConfig  # the config with absolute paths
    weights: str  # the suspect's weights file
    arch: str | None  # its architecture when it has no eftclip side file
    sha256: str  # of the weights file (a changed file is a new stage)
    templates: list  # prompt templates for detection and evaluation
    oracle_args: dict  # the oracle's arguments, --oracle-model included


def check(cfg: DefendConfig) -> Resolved:
    """Refuse bad input with a named error before anything is written or computed."""
    from eftclip.pipeline.defend_checks import check_files, check_names, resolve_model

    for flag in ("data", "pool", "oracle", "out"):
        if not getattr(cfg, flag):
            raise EftclipError(f"--{flag} is required")
    cfg = check_files(cfg)
    templates, oracle_args = check_names(cfg)
    batch = repair_recipe(cfg).batch_size
    if cfg.size < batch:
        raise EftclipError(f"--size {cfg.size}: the repair's batch is {batch} pairs; ask for at least that many")
    weights, arch = resolve_model(cfg)
    return Resolved(cfg, weights, arch, _sha256(weights), templates, oracle_args)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detection_plan(r: Resolved) -> Plan:
    """Phase 1: the suspect and the detection over the user's images."""
    c = r.cfg
    plan = Plan(Path(c.out) / "stages")
    plan.add(Node(id="suspect", kind="suspect", task="defend_suspect", label="the suspect model",
                  params={"checkpoint": r.weights, "model": r.arch, "sha256": r.sha256}))
    params = {"images": c.data, "vocab": c.vocab, "oracle": c.oracle, "oracle_args": r.oracle_args,
              "tau": c.tau, "theta": c.theta, "min_share": c.min_share, "min_count": c.min_count,
              "templates": r.templates, "mode": DetectConfig.mode}
    plan.add(Node(id="detect", kind="detect", task="defend_detect", params=params, needs={"model": "suspect"},
                  speed={"batch_size": c.batch_size}, label="detect over the data"))
    return plan


def repair_plan(plan: Plan, r: Resolved, target: str) -> dict[str, str]:
    """Phase 2 (K not empty): second look, trigger recovery, curation, repair, evaluation.  Returns the ids."""
    c, spec = r.cfg, EFTCLIP_DEFENSE
    ids = {"look": plan.add(Node(id="second_look", kind="second_look", task="second_look",
                                 params={"theta": c.second_look_theta}, needs={"detection": "detect"},
                                 label="second look at the flagged images"))}
    ids["recover"] = plan.add(Node(id="recover", kind="recover", task="recover_trigger",
                                   params={"pool": c.pool, "seed": c.seed, "method": c.recovery},
                                   needs={"model": "suspect", "detection": "detect"}, label="recover the trigger"))
    plan.add(Node(id="pool", kind="pool", task="defend_data", params={"pool_csv": c.pool}, label="the clean pool"))
    ids["curate"] = plan.add(Node(
        id="curate", kind="curate", task="curate", needs={"data": "pool", "detection": ids["look"]},
        params={"size": c.size, "unaffected_ratio": spec.unaffected_ratio, "seed": c.seed,
                "options": {"profile": spec.profile, "unlearn_share": spec.unlearn_share}},
        label=f"curate {c.size} pairs"))
    repair_set = ids["curate"]
    if spec.stamp_share:  # the recovered trigger stamped on a share of the set, true captions kept
        repair_set = ids["stamp"] = plan.add(Node(
            id="stamp", kind="stamp", task="stamp_set", params={"share": spec.stamp_share, "seed": c.seed},
            needs={"set": ids["curate"], "recovered": ids["recover"]},
            label=f"stamp the recovered trigger on {spec.stamp_share:.0%} of the pairs"))
    recipe = repair_recipe(c)
    numbers = key_fields(recipe)
    train_args = {**({"model": r.arch} if r.arch else {}),
                  **({"anchor_weight": spec.anchor_weight} if spec.anchor_weight else {})}
    ids["repair"] = plan.add(Node(
        id="repair", kind="finetune", task="finetune", needs={"model": "suspect", "set": repair_set},
        params={"recipe": numbers, "seed": c.seed, "name": "eftclip", "train_args": train_args},
        label="repair (fine-tune, the eftclip recipe)"))
    if c.eval:
        ids.update(_evaluation_plan(plan, r, target, ids))
    return ids


def repair_recipe(cfg: DefendConfig) -> FinetuneRecipe:
    """The eftclip defense's recipe (:data:`EFTCLIP_DEFENSE` over :class:`FinetuneRecipe`), ``epochs`` overridable,
    as trained on ``cfg.device`` (:func:`~eftclip.pipeline.recipes.on_device`)."""
    spec = EFTCLIP_DEFENSE
    own = {k: getattr(spec, k) for k in ("objective", "lr", "epochs") if getattr(spec, k) is not None}
    recipe = dataclasses.replace(FinetuneRecipe(), **own, **({"epochs": cfg.epochs} if cfg.epochs else {}))
    return on_device(recipe, cfg.device)


def _evaluation_plan(plan: Plan, r: Resolved, target: str, ids: dict) -> dict[str, str]:
    c = r.cfg
    plan.add(Node(id="eval_set", kind="eval_set", task="defend_data",
                  params={"eval": c.eval, "classnames": c.classes}, label="the evaluation set"))
    triggers = {"recovered": ids["recover"]}
    if c.true_attack:
        triggers["true"] = plan.add(Node(id="true_trigger", kind="true_trigger", task="named_trigger",
                                         params={"name": c.true_attack, "params": c.true_attack_params},
                                         label="the true trigger (scoring only)"))
    out = {}
    params = {"templates": r.templates, "target": target, "seed": c.seed}
    for model in ("suspect", "repair"):
        for name, trig in triggers.items():
            out[f"eval:{model}:{name}"] = plan.add(Node(
                id=f"evaluate/{model}/{name}", kind="evaluate", task="evaluate", params=params,
                needs={"data": "eval_set", "model": ids.get(model, model), "trigger": trig},
                label=f"CA and ASR of the {model} model under the {name} trigger"))
    if c.true_attack:
        out["iou"] = plan.add(Node(id="trigger_iou", kind="trigger_iou", task="trigger_iou",
                                   params={"images": 16, "seed": c.seed},
                                   needs={"recovered": ids["recover"], "true": triggers["true"], "data": "eval_set"},
                                   label="recovered mask against the true one (scoring only)"))
    return out


def run_defend(cfg: DefendConfig, *, resume: bool = False, force: bool = False, stream=None) -> dict:
    """Run (or continue) ``eftclip defend`` in ``cfg.out``; return the metrics written to ``metrics.json``.

    ``stream``: where progress lines and the verdict go (default: the current ``sys.stderr``)."""
    from eftclip.config import to_dict
    from eftclip.pipeline.defend_report import finish, target_of
    from eftclip.pipeline.executor import execute
    from eftclip.pipeline.run_folder import claim_folder

    stream = stream or sys.stderr
    r = check(cfg)
    out = Path(r.cfg.out)
    claim_folder(out, kind="defend", config={k: v for k, v in to_dict(r.cfg).items() if k not in ("progress",)},
                 resume=resume, force=force)
    env = {"device": r.cfg.device, "progress": r.cfg.progress}
    plan = detection_plan(r)
    results = execute(plan, env=env, stream=stream)
    target = target_of(results["detect"])
    ids = repair_plan(plan, r, target) if target else {}
    if ids:
        results = execute(plan, env=env, stream=stream)
    return finish(r, plan, results, ids, target, stream=stream)
