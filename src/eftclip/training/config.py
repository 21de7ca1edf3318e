"""Configs for pre-training (:class:`TrainConfig`) and fine-tuning (:class:`FinetuneConfig`).

Both are frozen dataclasses; the command line builds them from dataclass
defaults, then ``--config FILE`` (YAML), then explicit flags (see
:mod:`eftclip.config`).  The resolved config is written as ``config.yaml`` in
the run directory and is compared field by field when a run is resumed.

``batch_size`` is **per process** (as in open_clip's trainer); the contrastive
batch of one optimiser step is ``batch_size * world_size * accum_steps``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from eftclip.errors import EftclipError
from eftclip.training.augment import SYNONYM_SOURCES
from eftclip.precision import PRECISIONS

# fields that do not change the numbers a run produces: they may differ on --resume
RESUME_NEUTRAL = frozenset(
    {
        "out", "resume", "progress", "check_images", "tensorboard", "device", "workers", "cpu_threads",
        "cache_images", "cache_max_mb", "save_every_steps", "keep_checkpoints", "eval_batch_size", "records",
    }
)


# ---------------------------------------------------------------- shared pieces (each field declared once)


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """Where the pairs come from and how images are read."""

    data: str | None = None  # caption table (CSV/TSV/tar...) read with eftclip.data.captions.read_captions
    on_error: str = "fail"  # bad rows in --data: fail (error naming the row) or skip (dropped, counted in summary.json)
    check_images: bool = True  # decode every image once when reading --data (off: trust the files, faster on huge sets)
    cache_images: bool | None = None  # decode images once into memory (uint8 at model size); None = when under cache_max_mb
    cache_max_mb: int = 2048  # cache_images=None caches when N x 3 x S x S bytes fit in this many MiB
    workers: int = 0  # DataLoader workers when images are not cached
    eda_synonyms: str = "auto"  # EDA's synonyms (CleanCLIP, RoCLIP text views): auto (WordNet when installed, else the shipped table), wordnet or table
    records: Any = field(default=None, compare=False, repr=False)  # in-memory records instead of `data`

    def subset_pick(self) -> tuple[int, int] | None:
        """``(size, seed)`` of a random subset of the pairs to train on; None = all of them."""
        return None

    def _check_data(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise EftclipError(f"--on-error must be fail or skip, not '{self.on_error}'")
        if self.eda_synonyms not in SYNONYM_SOURCES:
            raise EftclipError(f"--eda-synonyms must be one of {', '.join(SYNONYM_SOURCES)}, not '{self.eda_synonyms}'")
        if self.data is None and self.records is None:
            raise EftclipError("--data is required (a caption CSV/TSV/webdataset)")


@dataclass(frozen=True, kw_only=True)
class OptimiserSettings:
    """AdamW and the step, the parts whose defaults pre-training and fine-tuning share."""

    weight_decay: float = 0.1  # AdamW decay on weights (not on gains, biases, norms, logit_scale: open_clip's rule)
    beta1: float = 0.9  # AdamW beta1
    seed: int = 0  # model init, data order and augmentations are all derived from it
    precision: str = "auto"  # auto|fp32|bf16|fp16: auto = bf16 autocast on CUDA, fp32 on CPU; bf16 on CPU needs AVX512-BF16 or AMX
    channels_last: bool = False  # convolution weights in NHWC order: faster ResNets on CPU; the last bits differ
    accum_steps: int = 1  # gradient accumulation with open_clip's feature cache (loss over the full batch)
    local_loss: bool = True  # open_clip --local-loss: each rank scores its own rows against all columns
    gather_with_grad: bool = True  # open_clip --gather-with-grad: exact global-batch gradient under DDP
    grad_clip: float | None = None  # max gradient norm; None = no clipping

    def _check_optimiser(self) -> None:
        if self.accum_steps < 1:
            raise EftclipError(f"--accum-steps must be >= 1, got {self.accum_steps}")
        if self.precision not in PRECISIONS:
            raise EftclipError(f"--precision: unknown '{self.precision}' (known: {', '.join(PRECISIONS)})")


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """Checkpoints, devices and logging: nothing here changes the numbers (see RESUME_NEUTRAL)."""

    save_every_steps: int = 0  # also checkpoint every N optimiser steps inside an epoch (0 = per epoch only)
    keep_checkpoints: int = 2  # how many step/epoch checkpoints to keep (the final one is always kept)
    resume: bool = False  # continue the run in `out` from its last checkpoint
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    cpu_threads: int | None = None  # torch intra-op threads during the run (None = torch's default); 1 is fastest on a busy CPU
    progress: bool = True  # tqdm progress bars on stderr
    tensorboard: bool = False  # also log to TensorBoard when it is installed

    def _check_runtime(self) -> None:
        if self.save_every_steps < 0:
            raise EftclipError(f"--save-every-steps must be >= 0, got {self.save_every_steps}")


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """The per-epoch zero-shot evaluation."""

    eval_data: str | None = None  # zero-shot image folder for per-epoch CA/ASR
    eval_classes: str | None = None  # class names: cifar10 | imagenet1k | JSON file
    eval_templates: str = "simple"  # prompt templates for the zero-shot classifier
    eval_attack: str | None = None  # trigger name for ASR (eftclip.attacks.create_trigger)
    eval_target: str | None = None  # target label for ASR
    eval_batch_size: int = 256  # batch size of the zero-shot evaluation

    def _check_eval(self) -> None:
        if (self.eval_attack is None) != (self.eval_target is None):
            raise EftclipError("--eval-attack and --eval-target go together")
        if self.eval_data is not None and self.eval_classes is None:
            raise EftclipError("--eval-data needs --eval-classes")


@dataclass(frozen=True, kw_only=True)
class RunSettings(EvalSettings, RuntimeSettings, OptimiserSettings, DataSettings):
    """Every shared piece; each config adds the fields whose defaults are its own."""

    def _check_shared(self) -> None:
        self._check_data()
        _check_schedule(self)
        self._check_optimiser()
        self._check_runtime()
        self._check_eval()


# ---------------------------------------------------------------- the two configs
# Each declares model, out, the schedule (epochs, batch_size, lr, warmup) and AdamW's beta2 and eps:
# their defaults differ between pre-training (open_clip's) and fine-tuning (CleanCLIP's).

# TrainConfig.defense -> the training objective it means (eftclip.training.objectives.OBJECTIVES)
DEFENSE_OBJECTIVES = {"none": "clip", "roclip": "roclip"}
# FinetuneConfig.objective values (eftclip.training.objectives.OBJECTIVES names that fine-tune)
FINETUNE_OBJECTIVES = ("cleanclip", "clip")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunSettings):
    """Contrastive pre-training from scratch (paper: RN50, AdamW, lr 5e-4, 10k warm-up, batch 128)."""

    model: str = "RN50"  # open_clip model name (project tiny configs included)
    out: str = "runs/train"  # run directory: config.yaml, summary.csv, checkpoints/, final.safetensors
    epochs: int = 64  # passes over the data
    batch_size: int = 128  # PER PROCESS; global contrastive batch = batch_size * world_size * accum_steps
    lr: float = 5e-4  # peak learning rate of the cosine schedule
    warmup: int = 10000  # linear warm-up steps (optimiser steps), as open_clip's --warmup
    beta2: float = 0.98  # AdamW beta2 (open_clip's default for CLIP from scratch)
    eps: float = 1e-6  # AdamW epsilon
    crop_scale_min: float = 0.9  # open_clip's RandomResizedCrop area lower bound; 1.0 = no crop (tiny images, where a crop cuts the object or a corner trigger)
    defense: str = "none"  # none | roclip
    roclip_pool_size: int = 1024  # RoCLIP: captions (text features) kept in the matching pool
    roclip_period: int = 2  # RoCLIP: every this many epochs, images are matched to the pool
    roclip_augment: bool = True  # RoCLIP: SimCLR-style image and EDA text augmentation

    def objective_names(self) -> tuple[str, ...]:
        """The objectives of the run, in the order their terms are summed."""
        return (DEFENSE_OBJECTIVES[self.defense],)

    def crop_scale(self) -> tuple[float, float]:
        """The random resized crop's area range for the plain contrastive objective."""
        return (self.crop_scale_min, 1.0)

    def validate(self) -> None:
        self._check_shared()
        if not 0 < self.crop_scale_min <= 1:
            raise EftclipError(f"--crop-scale-min must be in (0, 1], got {self.crop_scale_min}")
        if self.defense not in DEFENSE_OBJECTIVES:
            raise EftclipError(f"--defense: unknown defense '{self.defense}' (known: none, roclip)")
        if self.defense == "roclip":
            if self.roclip_pool_size < 1:
                raise EftclipError(f"--roclip-pool-size must be >= 1, got {self.roclip_pool_size}")
            if self.roclip_period < 1:
                raise EftclipError(f"--roclip-period must be >= 1, got {self.roclip_period}")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(RunSettings):
    """Fine-tuning a checkpoint; CleanCLIP defaults (10 epochs, batch 64, lr 1e-5, 50 warm-up)."""

    checkpoint: str | None = None  # model to fine-tune (eftclip.models.load_checkpoint)
    model: str | None = None  # architecture; None = from the checkpoint's side file; must match it
    out: str = "runs/finetune"  # run directory
    objective: str = "cleanclip"  # cleanclip (contrastive + in-modal) | clip (contrastive only)
    clip_weight: float = 1.0  # weight of the multimodal contrastive term
    inmodal_weight: float = 1.0  # weight of the in-modal term (image vs AutoAugment view, caption vs EDA)
    anchor_weight: float = 0.0  # clean-feature anchor: weight of the mean squared distance of the batch's unit image and text embeddings to the starting model's (0 = off)
    lock_text: bool = False  # freeze the text tower (open_clip's lock_text_tower): only the image tower learns, so zero-shot prompts keep their pre-trained embeddings
    subset: int | None = None  # use a random subset of this many pairs (the CleanCLIP baseline)
    subset_seed: int = 0  # seed of that subset
    epochs: int = 10  # passes over the data
    batch_size: int = 64  # PER PROCESS
    lr: float = 1e-5  # peak learning rate
    warmup: int = 50  # warm-up steps
    beta2: float = 0.999  # AdamW beta2 (CleanCLIP's)
    eps: float = 1e-8  # AdamW epsilon
    eda_alpha: float = 0.1  # EDA: share of words changed by each operation

    def objective_names(self) -> tuple[str, ...]:
        """The objectives of the run, in the order their terms are summed (the anchor when weighted)."""
        return (self.objective,) + (("anchor",) if self.anchor_weight > 0 else ())

    def crop_scale(self) -> tuple[float, float]:
        """Fine-tuning never crops: a crop can cut away the object or a corner trigger."""
        return (1.0, 1.0)

    def subset_pick(self) -> tuple[int, int] | None:
        return None if self.subset is None else (self.subset, self.subset_seed)

    def validate(self) -> None:
        self._check_shared()
        if self.objective not in FINETUNE_OBJECTIVES:
            raise EftclipError(f"--objective: unknown objective '{self.objective}' (known: cleanclip, clip)")
        if self.checkpoint is None:
            raise EftclipError("--checkpoint is required for fine-tuning")
        if self.clip_weight < 0 or self.inmodal_weight < 0 or self.anchor_weight < 0:
            raise EftclipError("--clip-weight, --inmodal-weight and --anchor-weight must be >= 0")
        if self.subset is not None and self.subset < 1:
            raise EftclipError(f"--subset must be >= 1, got {self.subset}")
        if not 0 <= self.eda_alpha <= 1:
            raise EftclipError(f"--eda-alpha must be in [0, 1], got {self.eda_alpha}")


def _check_schedule(cfg: Any) -> None:
    """The schedule fields every config declares (with its own defaults)."""
    if not cfg.lr > 0:
        raise EftclipError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.epochs < 1:
        raise EftclipError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise EftclipError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.warmup < 0:
        raise EftclipError(f"--warmup must be >= 0, got {cfg.warmup}")


def fingerprint(cfg: Any) -> dict[str, Any]:
    """The fields that decide a run's numbers (compared on --resume)."""
    names = {f.name for f in dataclasses.fields(cfg)} - RESUME_NEUTRAL
    return {k: v for k, v in vars(cfg).items() if k in names}
