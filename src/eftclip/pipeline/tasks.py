"""The stage functions a plan names: ``task(folder, params, inputs, env) -> result``.

``folder`` is the stage's cache folder; ``params`` its own settings (plain JSON, hashed);
``inputs`` the results of the stages it reads, by role; ``env`` run-wide settings
(device, progress) and the stage's speed-only settings.  Each returns plain JSON data.
They are module-level functions so that worker processes can run them by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from eftclip.pipeline import steps
from eftclip.pipeline.recipes import SPEED_ONLY, DetectRecipe, FinetuneRecipe, PretrainRecipe

TASKS: dict[str, Callable[[Path, dict, dict, dict], Any]] = {}


def task(fn: Callable) -> Callable:
    TASKS[fn.__name__] = fn
    return fn


def _context(folder: Path, params: dict, env: dict, splits: dict | None = None) -> steps.Context:
    return steps.Context(out=folder, seed=int(params.get("seed", 0)), device=env.get("device", "cpu"),
                         templates=list(params.get("templates", [])), target=params.get("target", ""),
                         world=dict(splits or {}), progress=env.get("progress", True),
                         train_procs=int(env.get("train_procs", 1)))


def _source(params: dict):
    from eftclip.pipeline.sources import build_source

    return build_source(params["source"])


def _speed(env: dict) -> dict:
    """The stage's speed-only settings (recipes.SPEED_ONLY) that the executor put in ``env``."""
    return {k: env[k] for k in SPEED_ONLY if k in env}


@task
def prepare_data(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """The source's splits for one seed."""
    return _source(params).prepare(folder, int(params["seed"]), env)


@task
def train_oracle(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """The source's oracle, trained on its clean reference split only."""
    return _source(params).train_oracle(folder, inputs["data"], int(params["seed"]), env)


@task
def pretrain(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Contrastive pre-training from scratch on ``inputs["data"][params["csv"]]``."""
    recipe = PretrainRecipe(**params["recipe"])
    args = {**_speed(env), **params.get("train_args", {})}
    return steps.pretrain(_context(folder, params, env), params["name"], inputs["data"][params["csv"]], recipe,
                          train_args=args)


@task
def build_trigger(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """The attack's trigger; TrojanNN-style optimises its patch against the surrogate (clean) CLIP."""
    ctx = _context(folder, params, env, inputs["data"])
    surrogate = inputs.get("surrogate", {}).get("checkpoint")
    images = _source(params).surrogate_images(inputs["data"]) if surrogate else []
    return steps.build_trigger(ctx, params["attack"], dict(params["params"]), surrogate, images)


@task
def poison(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Poison ``params["rate"]`` of the training pairs, the source's way."""
    splits = inputs["data"]
    options = _source(params).poison_options(splits, params["target"])
    return steps.poison(_context(folder, params, env, splits), splits["train_csv"], inputs["trigger"],
                        rate=float(params["rate"]), name="train", **options)


@task
def detection_set(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Held-out clean images, a share of those without the target triggered (truth kept for scoring)."""
    return steps.detection_set(_context(folder, params, env, inputs["data"]), inputs["trigger"],
                               scenes=int(params["scenes"]), share=float(params["share"]))


@task
def detect(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Algorithms 1 and 2 with the source's oracle over the detection set."""
    splits = inputs["data"]
    recipe = DetectRecipe(**params["recipe"])
    device = env.get("device", "cpu")
    oracle_args = _source(params).oracle_args(inputs["oracle"], splits, list(params["templates"]), device)
    detect_args = {"device": device, "batch_size": env.get("batch_size", recipe.batch_size),
                   "min_share": recipe.min_share, "min_count": recipe.min_count}
    return steps.detect(_context(folder, params, env, splits), inputs["model"]["checkpoint"],
                        inputs["images"]["csv"], inputs["oracle"], recipe, oracle_args=oracle_args,
                        detect_args=detect_args)


@task
def second_look(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Ask the oracle about the whole vocabulary on each flagged image (a copy of the detection's
    outputs, so the detection stage's folder is never changed); then, when ``params`` name a data
    source, score both affected-label rules against its ground truth, which the defense never reads."""
    import shutil

    from eftclip.detection.profile_truth import score_detection
    from eftclip.detection.second_look import run_second_look

    detection = Path(inputs["detection"]["dir"])
    looked = folder / "detection"
    looked.mkdir(parents=True, exist_ok=True)
    for path in detection.iterdir():
        if path.is_file() and not (looked / path.name).exists():
            shutil.copy2(path, looked / path.name)
    # the oracle is rebuilt from the detection's recorded arguments, on this run's device
    from eftclip.detection.second_look import read_detection

    device = {"device": env["device"]} if "device" in read_detection(looked).oracle_args and "device" in env else {}
    summary = run_second_look(looked, params.get("theta"), oracle_overrides=device,
                              progress=env.get("progress", True))
    scores = None
    if "source" in params:  # a study knows the truth; a user's own data (eftclip defend) has none
        objects, triggered = _source(params).truth(inputs["data"], inputs["images"]["csv"])
        scores = score_detection(looked, objects, triggered)  # scoring only: written beside, never read back
    return {"dir": str(looked), "summary": {k: v for k, v in summary.items() if k != "profile"},
            "profile": steps.read_profile(looked / "affected_labels_second_look.csv"), "profile_vs_truth": scores}


@task
def curate(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """The compact fine-tuning set from the clean pool, following the detection's profile."""
    ctx = _context(folder, params, env, inputs["data"])
    return steps.curate(ctx, inputs["detection"]["dir"], size=int(params["size"]),
                        unaffected_ratio=float(params["unaffected_ratio"]), **params.get("options", {}))


@task
def random_subset(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """No set is written: fine-tuning draws ``size`` random pool pairs itself (CleanCLIP's subset)."""
    return {"csv": inputs["data"]["pool_csv"], "subset": int(params["size"])}


@task
def finetune(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Fine-tune the suspect model on the defense's set."""
    recipe = FinetuneRecipe(**params["recipe"])
    data = inputs["set"]
    args = {**_speed(env), **params.get("train_args", {})}
    return steps.finetune(_context(folder, params, env), params["name"], inputs["model"]["checkpoint"], data["csv"],
                          recipe, subset=data.get("subset"), train_args=args)


@task
def evaluate(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Zero-shot CA and ASR (overall and per class) of one model under one trigger."""
    ctx = _context(folder, params, env, inputs["data"])
    return steps.evaluate(ctx, inputs["model"]["checkpoint"], inputs["trigger"], model_name=inputs["model"].get("model"),
                          num_workers=int(env.get("eval_workers", 0)), batch_size=int(env.get("eval_batch_size", 256)))


from eftclip.pipeline import defend_tasks  # noqa: E402,F401  registers the stages of eftclip defend


@task
def recover_cell_trigger(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Mask and pattern of the trigger from the flagged images, K, the suspect model and the clean pool
    (what a defender has; the cell's true trigger is never read)."""
    import torch

    from eftclip.detection.trigger_from_detection import recover_from_detection
    from eftclip.models import load_checkpoint

    from eftclip.io import read_json

    if not read_json(Path(inputs["detection"]["dir"]) / "metrics.json").get("K"):
        # detection found no trigger label: nothing to recover, and the defenses go on without a trigger
        return {"name": None, "params": {}, "dir": None, "summary": {"method": None, "mask_pixels": 0,
                                                                     "reason": "K is empty"}}
    device = env.get("device", "cpu")
    summary = recover_from_detection(inputs["detection"]["dir"], load_checkpoint(inputs["model"]["checkpoint"]),
                                     rng=torch.Generator().manual_seed(int(params["seed"])), out=folder / "trigger",
                                     method=params["method"], clean=inputs["data"]["pool_csv"], device=device)
    trig = summary.pop("trigger")  # name and params at the top: what an evaluate stage reads as its trigger
    return {"name": trig.pop("name"), "params": trig, "dir": str(folder / "trigger"), "summary": summary}


@task
def stamp_set(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """The set with a share of its pairs (drawn from all of them) stamped with the recovered trigger,
    captions kept, so that unlearning does not depend on how many flagged images there are."""
    import numpy as np

    from eftclip.curation.stamp import stamp_pairs
    from eftclip.data.captions import read_captions, write_captions_csv
    from eftclip.detection.trigger_recovery import load_recovery

    records = read_captions(inputs["set"]["csv"]).records
    rng = np.random.default_rng([int(params["seed"]), 23])
    recovered = inputs["recovered"].get("dir")  # None: no trigger was recovered, nothing to stamp
    n = min(len(records), int(round(float(params["share"]) * len(records)))) if recovered else 0
    chosen = set(rng.choice(len(records), size=n, replace=False).tolist()) if n else set()
    stamped = iter(stamp_pairs([records[i] for i in sorted(chosen)], load_recovery(recovered), folder / "stamped",
                               rng, csv_name=None) if n else [])
    rows = [next(stamped) if i in chosen else {"image": r.image, "caption": r.caption}
            for i, r in enumerate(records)]
    write_captions_csv(folder / "finetune.csv", [{"image": r["image"], "caption": r["caption"]} for r in rows],
                       ["image", "caption"])
    return {"csv": str(folder / "finetune.csv"), "stamped": n, "pairs": len(rows)}


@task
def cell_trigger_iou(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Scoring only: the recovered mask's IoU with the cell's true trigger (None when none was recovered)."""
    from eftclip.pipeline.defend_tasks import trigger_iou

    if not inputs["recovered"].get("dir"):
        return {"iou": None, "reason": "no trigger was recovered"}
    return trigger_iou(folder, params, inputs, env)
