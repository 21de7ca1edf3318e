"""The stages ``eftclip defend`` adds to the pipeline's own (second look, curate, finetune, evaluate).

Registered in :data:`eftclip.pipeline.tasks.TASKS` like every other stage: ``task(folder,
params, inputs, env) -> plain JSON``.  They read only what a real defender has: the suspect
model, the images it examines, the clean pool, the oracle's answers.  The one exception is
:func:`trigger_iou`, which scores the recovered mask against a trigger the user names for a
study; nothing reads its result back.
"""

from __future__ import annotations

from pathlib import Path

from eftclip.pipeline.tasks import task


def _bundle(model: dict, device: str):
    from eftclip.models import load_checkpoint

    return load_checkpoint(model["checkpoint"], model_name=model.get("model"), device=device)


@task
def defend_suspect(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """The suspect model: its weights file and architecture (its SHA-256 is in the params, so a
    changed file is a new stage)."""
    return {"checkpoint": params["checkpoint"], "model": params.get("model")}


@task
def defend_data(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """The user's splits under the names the pipeline's stages read (``pool_csv``, ``eval``, ``classnames``)."""
    return dict(params)


@task
def defend_detect(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Algorithms 1 and 2 over the user's images with the user's oracle (resumes a killed run)."""
    from eftclip.config import from_mapping
    from eftclip.detection.runner import DetectConfig, run_detection
    from eftclip.pipeline.steps import read_profile

    out = folder / "detection"
    device = env.get("device", "cpu")
    values = {**params, "checkpoint": inputs["model"]["checkpoint"], "out": str(out), "device": device,
              "templates": tuple(params["templates"]), "resume": (out / "images.jsonl").exists(),
              **({"batch_size": env["batch_size"]} if env.get("batch_size") else {})}
    cfg = from_mapping(DetectConfig, values, source="eftclip defend")
    metrics = run_detection(cfg, bundle=_bundle(inputs["model"], device))
    return {"dir": str(out), "metrics": metrics, "profile": read_profile(out / "affected_labels.csv")}


@task
def recover_trigger(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Mask and pattern of the trigger, from the flagged images, K and the clean pool."""
    import torch

    from eftclip.detection.trigger_from_detection import recover_from_detection

    device = env.get("device", "cpu")
    summary = recover_from_detection(inputs["detection"]["dir"], _bundle(inputs["model"], device),
                                     rng=torch.Generator().manual_seed(int(params["seed"])), out=folder / "trigger",
                                     method=params["method"], clean=params["pool"], device=device)
    trig = summary.pop("trigger")  # name and params at the top: what the evaluate stage reads as its trigger
    return {"name": trig.pop("name"), "params": trig, "dir": str(folder / "trigger"), "summary": summary}


@task
def named_trigger(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """A trigger by name and parameters (the true one, when a study knows it), validated."""
    from eftclip.attacks import create_trigger

    trigger = create_trigger(params["name"], **params["params"])
    return {"name": params["name"], "params": {k: v for k, v in trigger.params().items() if k != "name"}}


@task
def trigger_iou(folder: Path, params: dict, inputs: dict, env: dict) -> dict:
    """Scoring only: IoU of the recovered mask with where the true trigger lands on the eval images."""
    import numpy as np

    from eftclip.data.zeroshot import ImageFolderSet
    from eftclip.detection.trigger_from_detection import load_images
    from eftclip.detection.trigger_overlap import mask_iou, true_trigger_mask
    from eftclip.detection.trigger_recovery import load_recovery
    from eftclip.pipeline.steps import make_trigger

    recovered = load_recovery(inputs["recovered"]["dir"]).mask
    dataset = ImageFolderSet(inputs["data"]["eval"])
    refs = [str(path) for path, _ in dataset.samples[: int(params["images"])]]
    images = load_images(refs, recovered.shape[:2])
    truth = true_trigger_mask(make_trigger(inputs["true"]), list(images), np.random.default_rng(int(params["seed"])))
    return {"iou": mask_iou(recovered, truth), "true_pixels": int((truth >= 0.5).sum()),
            "recovered_pixels": int((recovered >= 0.5).sum()), "images": len(refs)}
