"""The training loop shared by pre-training (:func:`train`) and fine-tuning (:func:`finetune`).

What one optimiser step does (open_clip's ``train_one_epoch`` semantics):

* the lr is set from the cosine-with-warm-up schedule for this step;
* with ``accum_steps == 1``: forward, loss over the global batch (features are
  gathered across processes by open_clip's ClipLoss), backward, step;
* with ``accum_steps > 1``: open_clip's feature cache: all micro-batches are
  first encoded without gradient, then each is re-encoded with gradient and the
  loss is computed over all cached features with that micro-batch's slot
  replaced, so the contrastive batch is the whole accumulated batch;
* ``logit_scale`` is clamped to ``[0, ln 100]`` after the step.

The loss comes from the run's objectives (:mod:`eftclip.training.objectives`,
named by the config); the loop knows none of them by name.  A step whose
loss or gradient norm is not finite stops the run with an error naming the
step and the lr, before anything is saved: the last good checkpoint stays the
latest (:func:`check_finite`).

Resuming (``resume=True``): a run checkpoints at the end of every epoch, and
every ``save_every_steps`` optimiser steps inside an epoch when asked (see
:mod:`eftclip.training.run_files`).
Because each sample's randomness depends only on ``(seed, epoch, index)``
(see :mod:`eftclip.training.data`), the resumed run replays the remaining
steps of the interrupted epoch exactly: the weights equal an unbroken run's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from eftclip.config import load_yaml, write_config
from eftclip.errors import EftclipError
from eftclip.io import write_json
from eftclip.threads import torch_threads
from eftclip.training.config import FinetuneConfig, TrainConfig, fingerprint
from eftclip.training.data import Pairs, epoch_order
from eftclip.training.distributed import DistInfo, all_reduce_mean, barrier, setup_distributed, teardown
from eftclip.training.feed import Feeder
from eftclip.training.losses import make_clip_loss
from eftclip.training.objectives import Objective, ObjectiveContext, build_objectives, total_terms
from eftclip.training.run_files import Position, RunFiles
from eftclip.precision import autocast_for, resolve_precision
from eftclip.training.schedule import CosineWithWarmup

EpochHook = Callable[[int, dict], None]
StepHook = Callable[[int, int], None]  # (global_step, epoch) after each optimiser step


# --------------------------------------------------------------------------- public API


def train(cfg: TrainConfig, *, on_epoch_end: EpochHook | None = None, on_step_end: StepHook | None = None) -> dict:
    """Contrastive pre-training from scratch (optionally with RoCLIP); returns the final summary.

    Writes ``config.yaml``, ``summary.csv``, ``checkpoints/`` and
    ``final.safetensors`` (+ ``.json``) under ``cfg.out``.
    """
    cfg.validate()
    return _Run(cfg, kind="train", start=_fresh_model, on_epoch_end=on_epoch_end, on_step_end=on_step_end).run()


def finetune(cfg: FinetuneConfig, *, on_epoch_end: EpochHook | None = None, on_step_end: StepHook | None = None) -> dict:
    """Fine-tune ``cfg.checkpoint`` with CleanCLIP's objective (or plain CLIP); returns the final summary."""
    cfg.validate()
    return _Run(cfg, kind="finetune", start=_checkpoint_model, on_epoch_end=on_epoch_end,
                on_step_end=on_step_end).run()


# --------------------------------------------------------------------------- helpers


def load_pairs(cfg: Any) -> Pairs:
    """The run's image-caption pairs: ``cfg.records`` or ``read_captions(cfg.data)``, then ``cfg.subset_pick()``."""
    skipped = 0
    if cfg.records is not None:
        records = list(cfg.records)
        source = "records"
    else:
        from eftclip.data.captions import read_captions

        table = read_captions(cfg.data, on_error=cfg.on_error, check_images=cfg.check_images)
        records = table.records
        source = str(cfg.data)
        skipped = len(table.skipped)
        for bad in table.skipped[:5]:
            warnings.warn(f"skipped {bad}", stacklevel=3)
        if len(table.skipped) > 5:
            warnings.warn(f"skipped {len(table.skipped) - 5} more bad rows of {source}", stacklevel=3)
    if not records:
        raise EftclipError(f"{source}: the dataset holds no image-caption pairs")
    pick = cfg.subset_pick()
    if pick is not None:
        subset, seed = pick
        if subset > len(records):
            raise EftclipError(f"--subset {subset}: larger than the dataset ({len(records)} pairs in {source})")
        chosen = np.sort(np.random.default_rng([seed, 3]).choice(len(records), size=subset, replace=False))
        records = [records[i] for i in chosen]
    return Pairs(images=records, captions=[str(r.caption) for r in records], skipped=skipped)


def check_finite(value: float, what: str, *, step: int, lr: float, latest: str | None, epoch: int | None = None) -> None:
    """Stop the run at a non-finite loss, gradient norm or weight, before anything of this step is saved.

    ``step`` and ``epoch`` are 1-based; ``latest`` names the last checkpoint written (None: none yet).
    """
    if math.isfinite(value):
        return
    where = f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
    kept = f"the last good checkpoint ({latest}) stays the latest" if latest else "no checkpoint was written"
    raise EftclipError(
        f"{where}: the {what} is {value} at lr {lr:.6g}; training stopped and {kept}; "
        f"lower --lr (or set --grad-clip)"
    )


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # open_clip's trainer rule: no decay on gains/biases (ndim < 2), batch/layer norms, logit_scale
    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]


def _lock_text_tower(model: torch.nn.Module) -> None:
    """Freeze the text tower: a backdoor lives in the image tower, and a small fine-tuning
    set otherwise drags the zero-shot prompts' embeddings along with its own captions."""
    if hasattr(model, "lock_text_tower"):
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        return
    raise EftclipError(f"--lock-text: {type(model).__name__} has no text tower to lock")


def _adamw(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    try:
        # the fused kernel is several times faster than the per-tensor loop on CPU too
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


def _fresh_model(cfg: TrainConfig):
    """Pre-training starts from a random init that depends only on the seed."""
    from eftclip.models import create_model

    return create_model(cfg.model, seed=cfg.seed)


def _checkpoint_model(cfg: FinetuneConfig):
    """Fine-tuning starts from ``cfg.checkpoint`` (its architecture checked against ``cfg.model``)."""
    from eftclip.models import load_checkpoint
    from eftclip.models.checkpoints import checkpoint_model_name

    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise EftclipError(f"{path}: checkpoint file not found (--checkpoint)")
    recorded = checkpoint_model_name(path)
    if cfg.model is not None and recorded is not None and recorded != cfg.model:
        raise EftclipError(
            f"{path}: checkpoint holds architecture {recorded!r}, but --model is {cfg.model!r}; "
            f"drop --model or pass the matching one"
        )
    # create_model's throw-away random init would draw from the caller's global generator
    with torch.random.fork_rng(devices=[]):
        bundle = load_checkpoint(path, model_name=cfg.model)
    if cfg.lock_text:
        _lock_text_tower(bundle.model)
    return bundle


def _features(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor):
    out = model(images, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def _backward(loss: torch.Tensor, scaler) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()


@dataclass
class _Parts:
    """What the steps of a run share once it is set up."""

    info: DistInfo
    device: torch.device
    bundle: Any  # ClipBundle; its model is the one trained
    ddp_model: torch.nn.Module  # the model, wrapped for DDP under several processes
    objectives: list[Objective]
    feeder: Feeder
    optimizer: torch.optim.Optimizer
    schedule: CosineWithWarmup
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    autocast: Callable[[], Any]  # () -> context manager
    precision: str  # what the run computes in: fp32, bf16 or fp16 (eftclip.precision.resolve_precision)
    per_step: int  # pairs per optimiser step over all processes

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    def encode(self, batch: dict) -> dict:
        """Features of a micro-batch: the model's, then those the objectives add."""
        if "aug_image" in batch:
            n = batch["image"].shape[0]
            img, txt, scale = _features(self.ddp_model, torch.cat([batch["image"], batch["aug_image"]]),
                                        torch.cat([batch["text"], batch["aug_text"]]))
            feats = {"image": img[:n], "aug_image": img[n:], "text": txt[:n], "aug_text": txt[n:], "logit_scale": scale}
        else:
            img, txt, scale = _features(self.ddp_model, batch["image"], batch["text"])
            feats = {"image": img, "text": txt, "logit_scale": scale}
        for objective in self.objectives:
            feats.update(objective.features(batch))
        return feats

    def terms(self, feats: dict) -> dict:
        return total_terms(self.objectives, feats)


def _accumulated_step(p: _Parts, micro: list[dict]) -> tuple[dict, torch.Tensor]:
    """open_clip's accumulation: cache all micro-batch features, then re-encode each with grad."""
    cached = []
    with torch.no_grad():
        for batch in micro:
            with p.autocast():
                cached.append(p.encode(batch))
    keys = [k for k in cached[0] if k != "logit_scale"]
    terms_sum: dict[str, torch.Tensor] = {}
    for j, batch in enumerate(micro):
        with p.autocast():
            fresh = p.encode(batch)
            feats = {k: torch.cat([fresh[k] if i == j else c[k] for i, c in enumerate(cached)]) for k in keys}
            feats["logit_scale"] = fresh["logit_scale"]
            terms = p.terms(feats)
        _backward(terms["loss"], p.scaler)
        for k, v in terms.items():
            terms_sum[k] = terms_sum.get(k, 0) + v.detach()
    text = torch.cat([c["text"] for c in cached])
    return {k: v / len(micro) for k, v in terms_sum.items()}, text


class _Run:
    """One training or fine-tuning run (single process or one rank of a DDP job)."""

    def __init__(self, cfg: Any, *, kind: str, start: Callable[[Any], Any], on_epoch_end: EpochHook | None,
                 on_step_end: StepHook | None):
        self.cfg = cfg
        self.kind = kind  # "train" | "finetune": recorded in config.yaml and the checkpoints
        self.start = start  # cfg -> the ClipBundle the run starts from
        self.on_epoch_end = on_epoch_end
        self.on_step_end = on_step_end
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.files = RunFiles(self.out, kind=kind, keep=cfg.keep_checkpoints)
        self.latest_tag: str | None = None  # the last checkpoint written or resumed from

    # ---------------------------------------------------------------- setup

    def _config_record(self) -> dict:
        data = {k: v for k, v in vars(self.cfg).items() if k != "records"}
        if self.cfg.records is not None:
            data["data"] = f"<{len(self.cfg.records)} records in memory>"
        data["kind"] = self.kind
        return data

    def _check_run_dir(self) -> dict | None:
        """The latest checkpoint pointer when resuming; errors for a clash with an existing run."""
        latest = self.ckpt_dir / "latest.json"
        cfg_path = self.out / "config.yaml"
        if not self.cfg.resume:
            if latest.exists():
                raise EftclipError(
                    f"{self.out}: already holds a run with checkpoints; pass --resume to continue it "
                    f"or choose another --out"
                )
            return None
        if not latest.exists():
            warnings.warn(f"{self.out}: --resume given but no checkpoint found; starting from scratch", stacklevel=3)
            return None
        if cfg_path.exists():
            self._check_same_config(load_yaml(cfg_path), cfg_path)
        with open(latest, encoding="utf-8") as fh:
            return json.load(fh)

    def _check_same_config(self, saved: dict, cfg_path: Path) -> None:
        now = self._config_record()
        keys = set(fingerprint(self.cfg)) | {"kind"}
        if self.cfg.records is not None:
            keys.discard("data")
        # a field the saved config lacks was added since; its default is what that run did
        defaults = {f.name: f.default for f in dataclasses.fields(self.cfg) if f.default is not dataclasses.MISSING}
        saved = {**{k: defaults[k] for k in keys if k not in saved and k in defaults}, **saved}
        diff = [k for k in sorted(keys) if _yamlish(saved.get(k)) != _yamlish(now.get(k))]
        if diff:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:6])
            raise EftclipError(
                f"{cfg_path}: cannot resume, the run was made with another config ({detail}); "
                f"use the same flags or another --out"
            )

    def _steps_per_epoch(self, n_pairs: int, info: DistInfo) -> int:
        cfg = self.cfg
        per_step = cfg.batch_size * info.world_size * cfg.accum_steps
        if n_pairs // per_step == 0:
            raise EftclipError(
                f"--batch-size {cfg.batch_size}: one step needs {per_step} pairs "
                f"(batch size x {info.world_size} process(es) x {cfg.accum_steps} accumulation step(s)), "
                f"but the dataset holds only {n_pairs}"
            )
        return n_pairs // per_step

    def _setup(self, info: DistInfo, device: torch.device, pairs: Pairs, steps_per_epoch: int) -> _Parts:
        """The model, the objectives, the batches, the optimiser and the numeric precision of the run."""
        cfg = self.cfg
        bundle = self.start(cfg)
        model = bundle.model.to(device)
        if cfg.channels_last:  # a convolution whose weight is NHWC runs NHWC: the inputs need no change
            model.to(memory_format=torch.channels_last)
        model.train()
        clip_loss = make_clip_loss(
            local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad, rank=info.rank, world_size=info.world_size
        )
        objectives = build_objectives(cfg, ObjectiveContext(clip_loss=clip_loss, model=model))
        feeder = Feeder(cfg, pairs, bundle, objectives[0].views, info, device, steps_per_epoch=steps_per_epoch,
                        progress=cfg.progress and info.is_main)
        ddp_model = model
        if info.distributed:
            ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        optimizer = _adamw(model, cfg)
        schedule = CosineWithWarmup(optimizer, base_lr=cfg.lr, warmup=cfg.warmup, total_steps=steps_per_epoch * cfg.epochs)
        precision = resolve_precision(cfg.precision, device)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        autocast = autocast_for(precision, device)
        return _Parts(info, device, bundle, ddp_model, objectives, feeder, optimizer, schedule, scaler, autocast, precision,
                      per_step=cfg.batch_size * info.world_size * cfg.accum_steps)

    def _restore(self, latest: dict | None, p: _Parts) -> Position:
        if latest is None:
            return Position()
        position, states = self.files.restore(latest, p.model, p.optimizer, p.scaler, p.device,
                                              model_name=self.cfg.model)
        for objective, state in zip(p.objectives, states):
            objective.load_state_dict(state, p.device)
        self.latest_tag = latest["tag"]
        return position

    # ---------------------------------------------------------------- run

    def run(self) -> dict:
        cfg = self.cfg
        info, device = setup_distributed(cfg.device)
        try:
            with torch_threads(cfg.cpu_threads):
                return self._run(info, device)
        finally:
            teardown(info)

    def _run(self, info: DistInfo, device: torch.device) -> dict:
        latest = self._check_run_dir()
        if info.is_main:
            self.files.drop_stale_temps()
            self.files.drop_torn_checkpoints(latest)
        pairs = load_pairs(self.cfg)
        steps_per_epoch = self._steps_per_epoch(len(pairs), info)
        p = self._setup(info, device, pairs, steps_per_epoch)
        position = self._restore(latest, p)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_config(self.out / "config.yaml", self._config_record())
        writer = self._tensorboard() if info.is_main else None
        rows = list(position.rows)
        global_step = position.epoch * steps_per_epoch + position.step_in_epoch
        for epoch in range(position.epoch, self.cfg.epochs):
            resumed = epoch == position.epoch
            first = position.step_in_epoch if resumed else 0
            sums = dict(position.partial or {}) if resumed else {}
            row, global_step = self._epoch(p, epoch, first, sums, global_step, rows, writer, steps_per_epoch)
            self._end_epoch(p, epoch, row, rows, global_step, writer)
        return self._finish(p, pairs, rows, global_step, writer)

    def _epoch(self, p: _Parts, epoch: int, first: int, sums: dict, global_step: int, rows: list[dict], writer,
               steps_per_epoch: int) -> tuple[dict, int]:
        """The steps of one epoch from step ``first``; returns its summary row and the global step after it."""
        cfg = self.cfg
        for objective in p.objectives:
            objective.start_epoch(epoch)
        order = epoch_order(len(p.feeder.pairs), cfg.seed, epoch)
        t0 = time.perf_counter()
        samples_timed = 0
        show = cfg.progress and p.info.is_main
        bar = tqdm(p.feeder.batches(order, epoch, first), total=steps_per_epoch - first,
                   desc=f"{self.kind} epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
                   dynamic_ncols=True)
        for step, micro in bar:
            lr = p.schedule(global_step)
            terms, grad_norm = self._step(p, micro)
            global_step += 1
            values = {k: float(all_reduce_mean(v.detach().float(), p.info)) for k, v in terms.items()}
            self._guard(values["loss"], grad_norm, step=global_step, epoch=epoch + 1, lr=lr)
            for k, val in values.items():
                sums[k] = sums.get(k, 0.0) + val
            sums["_steps"] = sums.get("_steps", 0.0) + 1
            samples_timed += p.per_step
            self._log_step(bar, writer, terms, lr, global_step, show)
            if cfg.save_every_steps and global_step % cfg.save_every_steps == 0 and step + 1 != steps_per_epoch:
                self._save(p, f"step_{global_step:08d}", epoch=epoch, step=step + 1, rows=rows, partial=sums,
                           global_step=global_step)
            if self.on_step_end is not None:
                self.on_step_end(global_step, epoch)
        bar.close()
        seconds = time.perf_counter() - t0
        n_steps = max(sums.pop("_steps", 0.0), 1.0)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": global_step, "lr": p.optimizer.param_groups[0]["lr"]}
        row.update({k: v / n_steps for k, v in sums.items()})
        row["samples_per_s"] = samples_timed / seconds if seconds > 0 else float("nan")
        row["seconds"] = seconds
        return row, global_step

    def _step(self, p: _Parts, micro: list[dict]) -> tuple[dict, float | None]:
        """One optimiser step; returns its terms and the gradient norm before clipping."""
        p.optimizer.zero_grad(set_to_none=True)
        if self.cfg.accum_steps == 1:
            with p.autocast():
                feats = p.encode(micro[0])
                terms = p.terms(feats)
            _backward(terms["loss"], p.scaler)
            text = feats["text"]
        else:
            terms, text = _accumulated_step(p, micro)
        grad_norm = self._grad_norm(p)
        if p.scaler is not None:
            p.scaler.step(p.optimizer)
            p.scaler.update()
        else:
            p.optimizer.step()
        with torch.no_grad():
            p.model.logit_scale.clamp_(0, math.log(100))
        for objective in p.objectives:
            objective.after_step(text)
        return terms, grad_norm

    def _grad_norm(self, p: _Parts) -> float | None:
        """Clip when asked; the total gradient norm before clipping.

        None under fp16 loss scaling, whose scaler skips the steps with non-finite gradients itself.
        """
        if self.cfg.grad_clip is not None:
            if p.scaler is not None:
                p.scaler.unscale_(p.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(p.model.parameters(), self.cfg.grad_clip)
            return None if p.scaler is not None else float(norm)
        if p.scaler is not None:
            return None
        grads = [q.grad for q in p.model.parameters() if q.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def _guard(self, loss: float, grad_norm: float | None, *, step: int, epoch: int, lr: float) -> None:
        check_finite(loss, "loss", step=step, epoch=epoch, lr=lr, latest=self.latest_tag)
        if grad_norm is not None:
            check_finite(grad_norm, "gradient norm", step=step, epoch=epoch, lr=lr, latest=self.latest_tag)

    def _log_step(self, bar, writer, terms: dict, lr: float, global_step: int, show: bool) -> None:
        if show:
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}", lr=f"{lr:.2e}")
        if writer is not None:
            writer.add_scalar("train/loss", float(terms["loss"].detach()), global_step)
            writer.add_scalar("train/lr", lr, global_step)

    def _end_epoch(self, p: _Parts, epoch: int, row: dict, rows: list[dict], global_step: int, writer) -> None:
        """Evaluate, checkpoint, write the summary and call the epoch hook."""
        if self.cfg.eval_data is not None and p.info.is_main:
            row.update(self._evaluate(p.bundle, p.device))
            p.model.train()
        rows.append(row)
        self._save(p, f"epoch_{epoch + 1}", epoch=epoch + 1, step=0, rows=rows, partial={}, global_step=global_step)
        if p.info.is_main:
            self.files.write_summary(rows)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                        writer.add_scalar(f"epoch/{k}", v, epoch + 1)
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch + 1, dict(row))

    def _finish(self, p: _Parts, pairs: Pairs, rows: list[dict], global_step: int, writer) -> dict:
        """The final weights and ``summary.json``; returns the summary."""
        final = self.out / "final.safetensors"
        self._check_weights(p, global_step)
        if p.info.is_main:
            from eftclip.models import save_checkpoint

            save_checkpoint(p.model, final, model_name=p.bundle.name,
                            meta={"kind": self.kind, "config": self._config_record(), "epochs": self.cfg.epochs})
            if writer is not None:
                writer.close()
        barrier(p.info)
        eda = p.objectives[0].views.eda
        summary = {
            "out": str(self.out),
            "final_checkpoint": str(final),
            "model": p.bundle.name,
            "epochs": self.cfg.epochs,
            "steps": global_step,
            "pairs": len(pairs),
            "skipped_rows": pairs.skipped,
            "world_size": p.info.world_size,
            "precision": p.precision,
            "eda_synonyms": eda.synonyms.name if eda is not None else None,
            "last_epoch": rows[-1] if rows else {},
        }
        if p.info.is_main:
            write_json(self.out / "summary.json", summary)
        return summary

    # ---------------------------------------------------------------- pieces

    def _check_weights(self, p: _Parts, global_step: int) -> None:
        """No checkpoint of non-finite weights: every rank checks (they hold the same weights) before saving."""
        if not all(bool(torch.isfinite(q).all()) for q in p.model.parameters()):
            check_finite(float("nan"), "value of a weight", step=global_step, lr=p.optimizer.param_groups[0]["lr"],
                         latest=self.latest_tag)

    def _save(self, p: _Parts, tag: str, *, epoch: int, step: int, rows: list[dict], partial: dict,
              global_step: int) -> None:
        self._check_weights(p, global_step)
        if not p.info.is_main:
            barrier(p.info)
            return
        self.files.save(tag, p.model, p.bundle.name, p.optimizer, p.scaler, [o.state_dict() for o in p.objectives],
                        position=Position(epoch, step, tuple(rows), partial), global_step=global_step)
        self.latest_tag = tag
        barrier(p.info)

    def _evaluate(self, bundle, device) -> dict:
        from eftclip.data.zeroshot import ImageFolderSet, load_templates
        from eftclip.evaluation.zeroshot import evaluate

        cfg = self.cfg
        dataset = ImageFolderSet(cfg.eval_data, classnames=cfg.eval_classes)
        trigger = None
        if cfg.eval_attack is not None:
            from eftclip.attacks import create_trigger

            trigger = create_trigger(cfg.eval_attack)
        bundle.model.eval()
        res = evaluate(
            bundle,
            dataset,
            templates=load_templates(cfg.eval_templates),  # a spec: openai | cifar10 | simple | JSON file
            trigger=trigger,
            target=cfg.eval_target,
            seed=cfg.seed,
            batch_size=cfg.eval_batch_size,
            device=str(device),
            progress=False,
        )
        out = {"ca_top1": res["ca_top1"], "ca_top5": res["ca_top5"]}
        if trigger is not None:
            out["asr"] = res["asr"]
        return out

    def _tensorboard(self):
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("--tensorboard: the tensorboard package is not installed; logging to summary.csv only", stacklevel=3)
            return None
        return SummaryWriter(log_dir=str(self.out / "tensorboard"))


def _yamlish(value: Any) -> Any:
    """Normalise a config value the way a YAML round trip would (tuples -> lists)."""
    if isinstance(value, tuple):
        return [_yamlish(v) for v in value]
    if isinstance(value, list):
        return [_yamlish(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
