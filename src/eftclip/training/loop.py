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

Resuming (``resume=True``): a run checkpoints at the end of every epoch, and
every ``save_every_steps`` optimiser steps inside an epoch when asked.  A
checkpoint is the weights (``checkpoints/<tag>.safetensors`` + ``.json`` via
:func:`eftclip.models.save_checkpoint`), a state file
(``checkpoints/<tag>.state.pt``: optimiser, grad scaler, RoCLIP pool, position,
summary rows; written with ``torch.save`` and read with ``weights_only=True``)
and, written last, ``checkpoints/latest.json`` naming them; every file is
written atomically, so a killed run leaves the previous complete checkpoint.
Because each sample's randomness depends only on ``(seed, epoch, index)``
(see :mod:`eftclip.training.data`), the resumed run replays the remaining
steps of the interrupted epoch exactly: the weights equal an unbroken run's.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from eftclip.config import load_yaml, write_config
from eftclip.errors import EftclipError
from eftclip.io import atomic_open, atomic_path, write_json
from eftclip.training.augment import EDA, default_synonyms
from eftclip.training.config import FinetuneConfig, TrainConfig, fingerprint
from eftclip.training.data import PairDataset, Pairs, collate, epoch_order, step_keys
from eftclip.training.distributed import DistInfo, all_reduce_mean, barrier, setup_distributed, teardown
from eftclip.training.losses import CleanClipLoss, ContrastiveLoss, make_clip_loss
from eftclip.training.roclip import CaptionPool, RoClipLoss, is_matching_epoch
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
    return _Run(cfg, kind="train", on_epoch_end=on_epoch_end, on_step_end=on_step_end).run()


def finetune(cfg: FinetuneConfig, *, on_epoch_end: EpochHook | None = None, on_step_end: StepHook | None = None) -> dict:
    """Fine-tune ``cfg.checkpoint`` with CleanCLIP's objective (or plain CLIP); returns the final summary."""
    cfg.validate()
    return _Run(cfg, kind="finetune", on_epoch_end=on_epoch_end, on_step_end=on_step_end).run()


# --------------------------------------------------------------------------- helpers


def load_pairs(cfg: Any) -> Pairs:
    """The run's image-caption pairs: ``cfg.records`` or ``read_captions(cfg.data)``, then ``subset``."""
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
    subset = getattr(cfg, "subset", None)
    if subset is not None:
        if subset > len(records):
            raise EftclipError(f"--subset {subset}: larger than the dataset ({len(records)} pairs in {source})")
        pick = np.sort(np.random.default_rng([cfg.subset_seed, 3]).choice(len(records), size=subset, replace=False))
        records = [records[i] for i in pick]
    return Pairs(images=records, captions=[str(r.caption) for r in records], skipped=skipped)


def _normalizer(preprocess: Any) -> tuple[list[float], list[float]]:
    for t in getattr(preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            return list(t.mean), list(t.std)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


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


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """Use ``n`` intra-op threads for the run and restore the previous number afterwards."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seeded_init(name: str, seed: int):
    """Build a randomly initialised model whose init depends only on ``seed``.

    open_clip initialises from torch's global generator; it is forked (saved and
    restored on exit) so the caller's global random state is left as it was.
    """
    from eftclip.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        return create_model(name)


def _to_float(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images.float().div_(255.0) - mean) / std


def _features(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor):
    out = model(images, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


class _Run:
    """One training or fine-tuning run (single process or one rank of a DDP job)."""

    def __init__(self, cfg: Any, *, kind: str, on_epoch_end: EpochHook | None, on_step_end: StepHook | None):
        self.cfg = cfg
        self.kind = kind
        self.on_epoch_end = on_epoch_end
        self.on_step_end = on_step_end
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"

    # ---------------------------------------------------------------- setup

    def _config_record(self) -> dict:
        data = {f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(self.cfg) if f.name != "records"}
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
            saved = load_yaml(cfg_path)
            now = self._config_record()
            keys = set(fingerprint(self.cfg)) | {"kind"}
            if self.cfg.records is not None:
                keys.discard("data")
            diff = [k for k in sorted(keys) if _yamlish(saved.get(k)) != _yamlish(now.get(k))]
            if diff:
                detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:6])
                raise EftclipError(
                    f"{cfg_path}: cannot resume, the run was made with another config ({detail}); "
                    f"use the same flags or another --out"
                )
        with open(latest, encoding="utf-8") as fh:
            return json.load(fh)

    def _build_model(self):
        cfg = self.cfg
        if self.kind == "train":
            return _seeded_init(cfg.model, cfg.seed)
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
            return load_checkpoint(path, model_name=cfg.model)

    def _precision(self, device: torch.device) -> str:
        p = self.cfg.precision
        if device.type != "cuda":
            if p in ("bf16", "fp16"):
                warnings.warn(f"--precision {p}: mixed precision is for GPUs; training in fp32 on {device}", stacklevel=3)
            return "fp32"
        return "bf16" if p == "auto" else p

    # ---------------------------------------------------------------- run

    def run(self) -> dict:
        cfg = self.cfg
        info, device = setup_distributed(cfg.device)
        try:
            with _cpu_threads(cfg.cpu_threads):
                return self._run(info, device)
        finally:
            teardown(info)

    def _run(self, info: DistInfo, device: torch.device) -> dict:
        cfg = self.cfg
        latest = self._check_run_dir()
        if info.is_main and self.ckpt_dir.is_dir():
            # temp files of a writer killed mid-write (SIGKILL skips atomic_open's clean-up)
            for stale in self.ckpt_dir.glob(".*.tmp*"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        pairs = load_pairs(cfg)
        per_step = cfg.batch_size * info.world_size * cfg.accum_steps
        steps_per_epoch = len(pairs) // per_step
        if steps_per_epoch == 0:
            raise EftclipError(
                f"--batch-size {cfg.batch_size}: one step needs {per_step} pairs "
                f"(batch size x {info.world_size} process(es) x {cfg.accum_steps} accumulation step(s)), "
                f"but the dataset holds only {len(pairs)}"
            )
        bundle = self._build_model()
        model = bundle.model.to(device)
        model.train()
        name = bundle.name

        # data
        mode = {"train": "roclip" if getattr(cfg, "defense", "none") == "roclip" else "clip"}.get(self.kind)
        if self.kind == "finetune":
            mode = "cleanclip" if cfg.objective == "cleanclip" else "finetune-clip"
        needs_eda = mode == "cleanclip" or (mode == "roclip" and cfg.roclip_augment)
        eda = EDA(default_synonyms(), alpha=getattr(cfg, "eda_alpha", 0.1)) if needs_eda else None
        cache_mb = len(pairs) * 3 * bundle.image_size**2 / 2**20
        cache = cfg.cache_images if cfg.cache_images is not None else cache_mb <= cfg.cache_max_mb
        show = cfg.progress and info.is_main
        dataset = PairDataset(
            pairs,
            image_size=bundle.image_size,
            mode=mode,
            seed=cfg.seed,
            cache=cache,
            eda=eda,
            augment=getattr(cfg, "roclip_augment", True),
            progress=show,
            crop_scale=(getattr(cfg, "crop_scale_min", 0.9), 1.0),
        )
        mean_l, std_l = _normalizer(bundle.preprocess_val)
        mean = torch.tensor(mean_l, device=device).view(1, 3, 1, 1)
        std = torch.tensor(std_l, device=device).view(1, 3, 1, 1)
        tokenizer = bundle.tokenizer
        token_cache = tokenizer(pairs.captions) if cache else None

        # objective
        clip_loss = make_clip_loss(
            local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad, rank=info.rank, world_size=info.world_size
        )
        pool = None
        if mode == "cleanclip":
            objective: torch.nn.Module = CleanClipLoss(clip_loss, clip_weight=cfg.clip_weight, inmodal_weight=cfg.inmodal_weight)
        elif mode == "roclip":
            pool = CaptionPool(cfg.roclip_pool_size)
            objective = RoClipLoss(clip_loss, pool)
        else:
            objective = ContrastiveLoss(clip_loss)

        if getattr(cfg, "lock_text", False):
            _lock_text_tower(model)

        ddp_model = model
        if info.distributed:
            ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )

        optimizer = _adamw(model, cfg)
        total_steps = steps_per_epoch * cfg.epochs
        schedule = CosineWithWarmup(optimizer, base_lr=cfg.lr, warmup=cfg.warmup, total_steps=total_steps)
        precision = self._precision(device)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16))
            if precision != "fp32"
            else contextlib.nullcontext
        )

        # position and history
        start_epoch, start_step, rows = 0, 0, []
        partial: dict[str, float] = {}
        if latest is not None:
            start_epoch, start_step, rows, partial = self._restore(latest, model, optimizer, scaler, pool, device)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_config(self.out / "config.yaml", self._config_record())
        writer = self._tensorboard() if info.is_main else None

        def batch_tensors(b: dict, keys: list[tuple[int, int]]) -> dict:
            idx = [i for _, i in keys]
            out = {"image": _to_float(b["image"].to(device, non_blocking=True), mean, std)}
            if token_cache is not None and all(t == pairs.captions[i] for t, i in zip(b["text"], idx)):
                out["text"] = token_cache[idx].to(device, non_blocking=True)
            else:
                out["text"] = tokenizer(b["text"]).to(device, non_blocking=True)
            if "aug_image" in b:
                out["aug_image"] = _to_float(b["aug_image"].to(device, non_blocking=True), mean, std)
                out["aug_text"] = tokenizer(b["aug_text"]).to(device, non_blocking=True)
            return out

        def batches(order: np.ndarray, epoch: int, first: int):
            """Yield (step, [micro-batch tensors]) from step ``first`` on; workers decode when asked."""
            plan = [
                step_keys(order, step, batch=cfg.batch_size, world=info.world_size, rank=info.rank,
                          accum=cfg.accum_steps, epoch=epoch)
                for step in range(first, steps_per_epoch)
            ]
            flat = [keys for micro in plan for keys in micro]
            if cfg.workers > 0 and not cache:
                source = iter(torch.utils.data.DataLoader(
                    dataset, batch_sampler=flat, collate_fn=collate, num_workers=cfg.workers,
                    persistent_workers=False, pin_memory=device.type == "cuda",
                ))
            else:
                source = (collate([dataset[k] for k in keys]) for keys in flat)
            for offset, micro in enumerate(plan):
                yield first + offset, [batch_tensors(next(source), keys) for keys in micro]

        def encode(batch: dict) -> dict:
            if "aug_image" in batch:
                n = batch["image"].shape[0]
                img, txt, scale = _features(
                    ddp_model, torch.cat([batch["image"], batch["aug_image"]]), torch.cat([batch["text"], batch["aug_text"]])
                )
                return {"image": img[:n], "aug_image": img[n:], "text": txt[:n], "aug_text": txt[n:], "logit_scale": scale}
            img, txt, scale = _features(ddp_model, batch["image"], batch["text"])
            return {"image": img, "text": txt, "logit_scale": scale}

        def compute_loss(feats: dict) -> dict:
            extra = {k: feats[k] for k in ("aug_image", "aug_text") if k in feats}
            return objective(feats["image"], feats["text"], feats["logit_scale"], **extra)

        global_step = start_epoch * steps_per_epoch + start_step
        last: dict = rows[-1] if rows else {}
        for epoch in range(start_epoch, cfg.epochs):
            if pool is not None:
                objective.matching = is_matching_epoch(epoch, cfg.roclip_period)
            order = epoch_order(len(pairs), cfg.seed, epoch)
            first = start_step if epoch == start_epoch else 0
            sums = dict(partial) if epoch == start_epoch else {}
            partial = {}
            t0 = time.perf_counter()
            samples_timed = 0
            bar = tqdm(
                batches(order, epoch, first),
                total=steps_per_epoch - first,
                desc=f"{self.kind} epoch {epoch + 1}/{cfg.epochs}",
                disable=not show,
                leave=False,
                dynamic_ncols=True,
            )
            for step, micro in bar:
                lr = schedule(global_step)
                optimizer.zero_grad(set_to_none=True)
                if cfg.accum_steps == 1:
                    with autocast():
                        feats = encode(micro[0])
                        terms = compute_loss(feats)
                    self._backward(terms["loss"], scaler)
                    text_for_pool = feats["text"]
                else:
                    terms, text_for_pool = self._accumulated_step(micro, encode, compute_loss, autocast, scaler)
                if cfg.grad_clip is not None:
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                if pool is not None:
                    pool.add(text_for_pool.detach())
                global_step += 1
                for k, v in terms.items():
                    val = float(all_reduce_mean(v.detach().float(), info))
                    sums[k] = sums.get(k, 0.0) + val
                sums["_steps"] = sums.get("_steps", 0.0) + 1
                samples_timed += per_step
                if show:
                    bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}", lr=f"{lr:.2e}")
                if writer is not None:
                    writer.add_scalar("train/loss", float(terms["loss"].detach()), global_step)
                    writer.add_scalar("train/lr", lr, global_step)
                done_epoch = step + 1 == steps_per_epoch
                if cfg.save_every_steps and global_step % cfg.save_every_steps == 0 and not done_epoch:
                    self._save(f"step_{global_step:08d}", model, name, optimizer, scaler, pool, info,
                               epoch=epoch, step=step + 1, rows=rows, partial=sums, global_step=global_step)
                if self.on_step_end is not None:
                    self.on_step_end(global_step, epoch)
            bar.close()
            seconds = time.perf_counter() - t0
            n_steps = max(sums.pop("_steps", 0.0), 1.0)
            row: dict[str, Any] = {"epoch": epoch + 1, "step": global_step, "lr": optimizer.param_groups[0]["lr"]}
            row.update({k: v / n_steps for k, v in sums.items()})
            row["samples_per_s"] = samples_timed / seconds if seconds > 0 else float("nan")
            row["seconds"] = seconds
            if cfg.eval_data is not None and info.is_main:
                row.update(self._evaluate(bundle, device))
                model.train()
            rows.append(row)
            last = row
            self._save(f"epoch_{epoch + 1}", model, name, optimizer, scaler, pool, info,
                       epoch=epoch + 1, step=0, rows=rows, partial={}, global_step=global_step)
            if info.is_main:
                self._write_summary(rows)
                if writer is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                            writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch + 1, dict(row))

        final = self.out / "final.safetensors"
        if info.is_main:
            from eftclip.models import save_checkpoint

            save_checkpoint(model, final, model_name=name, meta={"kind": self.kind, "config": self._config_record(), "epochs": cfg.epochs})
            if writer is not None:
                writer.close()
        barrier(info)
        summary = {
            "out": str(self.out),
            "final_checkpoint": str(final),
            "model": name,
            "epochs": cfg.epochs,
            "steps": global_step,
            "pairs": len(pairs),
            "skipped_rows": pairs.skipped,
            "world_size": info.world_size,
            "eda_synonyms": eda.synonyms.name if eda is not None else None,
            "last_epoch": last,
        }
        if info.is_main:
            write_json(self.out / "summary.json", summary)
        return summary

    # ---------------------------------------------------------------- pieces

    @staticmethod
    def _backward(loss: torch.Tensor, scaler) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()

    def _accumulated_step(self, micro, encode, compute_loss, autocast, scaler):
        """open_clip's accumulation: cache all micro-batch features, then re-encode each with grad."""
        cached = []
        with torch.no_grad():
            for batch in micro:
                with autocast():
                    cached.append(encode(batch))
        keys = [k for k in cached[0] if k != "logit_scale"]
        terms_sum: dict[str, torch.Tensor] = {}
        for j, batch in enumerate(micro):
            with autocast():
                fresh = encode(batch)
                feats = {k: torch.cat([fresh[k] if i == j else c[k] for i, c in enumerate(cached)]) for k in keys}
                feats["logit_scale"] = fresh["logit_scale"]
                terms = compute_loss(feats)
            self._backward(terms["loss"], scaler)
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0) + v.detach()
        text = torch.cat([c["text"] for c in cached])
        return {k: v / len(micro) for k, v in terms_sum.items()}, text

    def _state_path(self, tag: str) -> Path:
        return self.ckpt_dir / f"{tag}.state.pt"

    def _save(self, tag, model, name, optimizer, scaler, pool, info, *, epoch, step, rows, partial, global_step) -> None:
        if not info.is_main:
            barrier(info)
            return
        from eftclip.models import save_checkpoint

        weights = save_checkpoint(
            model,
            self.ckpt_dir / f"{tag}.safetensors",
            model_name=name,
            meta={"kind": self.kind, "epoch": epoch, "step_in_epoch": step, "global_step": global_step},
        )
        state = {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "pool": pool.state_dict() if pool is not None else {},
            "epoch": epoch,
            "step_in_epoch": step,
            "global_step": global_step,
            "rows_json": json.dumps(rows),
            "partial_json": json.dumps(partial),
        }
        with atomic_path(self._state_path(tag)) as tmp:
            torch.save(state, tmp)
        write_json(
            self.ckpt_dir / "latest.json",
            {"tag": tag, "weights": weights.name, "state": self._state_path(tag).name,
             "epoch": epoch, "step_in_epoch": step, "global_step": global_step},
        )
        self._prune(keep=tag)
        barrier(info)

    def _prune(self, keep: str) -> None:
        tags = sorted(
            {p.name.split(".")[0] for p in self.ckpt_dir.glob("*.state.pt")},
            key=lambda t: os.path.getmtime(self._state_path(t)),
        )
        for tag in tags[: max(0, len(tags) - max(1, self.cfg.keep_checkpoints))]:
            if tag == keep:
                continue
            for suffix in (".safetensors", ".json", ".state.pt"):
                with contextlib.suppress(FileNotFoundError):
                    (self.ckpt_dir / f"{tag}{suffix}").unlink()

    def _restore(self, latest: dict, model, optimizer, scaler, pool, device):
        from eftclip.models import read_state_dict

        weights = self.ckpt_dir / latest["weights"]
        state_path = self.ckpt_dir / latest["state"]
        if not weights.is_file() or not state_path.is_file():
            raise EftclipError(f"{self.ckpt_dir / 'latest.json'}: names {weights.name} / {state_path.name}, which are missing")
        try:
            model.load_state_dict(read_state_dict(weights), strict=True)
        except RuntimeError as exc:
            raise EftclipError(f"{weights}: does not fit --model {self.cfg.model!r} ({str(exc)[:200]})") from None
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EftclipError(f"{state_path}: cannot read the training state ({exc})") from None
        optimizer.load_state_dict(state["optimizer"])
        for st in optimizer.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    st[k] = v.to(device)
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        if pool is not None and state["pool"]:
            pool.load_state_dict(state["pool"], device)
        return int(state["epoch"]), int(state["step_in_epoch"]), json.loads(state["rows_json"]), json.loads(state["partial_json"])

    def _write_summary(self, rows: list[dict]) -> None:
        columns: list[str] = []
        for r in rows:
            for k in r:
                if k not in columns and not isinstance(r[k], dict):
                    columns.append(k)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
        with atomic_open(self.out / "summary.csv", "w") as fh:
            fh.write(buf.getvalue())

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
