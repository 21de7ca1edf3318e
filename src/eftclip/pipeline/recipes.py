"""One schema for every experiment: how models are pre-trained, how detection runs, which
attacks and defenses a matrix holds.  ``eftclip demo`` and ``eftclip study`` both read it.

The defaults here are the built-in world's (the default demo); a preset YAML
(``src/eftclip/presets/*.yaml``, ``configs/*.yaml``) states only what differs.
Detection thresholds default to :class:`eftclip.detection.runner.DetectConfig`'s, and the
oracle confidence threshold to the data source's (it is a property of the source's oracle),
so each is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from eftclip.detection.runner import DetectConfig

# recipe fields that change speed, not the numbers: left out of the stage cache keys
SPEED_ONLY = frozenset({"workers", "cache_images", "cpu_threads"})
# fields added after stages were cached: left out of the key at these values, so that the stages made with
# that value stay valid, and any other value gets stages of its own
KEYED_UNLESS = {"eda_synonyms": "table", "channels_last": False}


def on_device(recipe: Any, device: str) -> Any:
    """``recipe`` as trained on ``device``: ``precision: auto`` means bf16 on CUDA and fp32 on CPU, so on CUDA
    it is written out, and GPU-made training stages are keyed apart from CPU-made ones (CPU keys keep ``auto``)."""
    if device.startswith("cuda") and recipe.precision == "auto":
        return dataclasses.replace(recipe, precision="bf16")
    return recipe


def without_legacy_defaults(data: Any) -> Any:
    """``data`` (plain dicts and lists, as hashed into cache keys) without the KEYED_UNLESS fields at those values,
    at any depth: a recipe nested in a source's settings (the folder oracle's labeller) keeps its old keys too."""
    if isinstance(data, dict):
        return {k: without_legacy_defaults(v) for k, v in data.items()
                if not (k in KEYED_UNLESS and v == KEYED_UNLESS[k])}
    if isinstance(data, list):
        return [without_legacy_defaults(v) for v in data]
    return data


def key_fields(recipe: Any) -> dict:
    """The recipe's fields that its stages' numbers depend on: its share of their cache keys."""
    return without_legacy_defaults({k: v for k, v in dataclasses.asdict(recipe).items() if k not in SPEED_ONLY})


def speed_fields(recipe: Any) -> dict:
    """The recipe's SPEED_ONLY fields that are set (not None), as training-config keyword arguments."""
    return {k: v for k, v in dataclasses.asdict(recipe).items() if k in SPEED_ONLY and v is not None}


@dataclass(frozen=True)
class PretrainRecipe:
    """How a CLIP is pre-trained from scratch on caption pairs."""

    model: str = "eftclip-world-rn"  # open_clip architecture (project tiny configs included)
    epochs: int = 30  # passes over the pairs
    batch_size: int = 128  # contrastive batch of one step (with train_procs > 1 split over the processes)
    lr: float = 5e-3  # peak learning rate (cosine schedule)
    warmup: int = 500  # warm-up steps; a short warm-up can leave a clean model on the early loss plateau
    weight_decay: float = 0.1  # AdamW decay
    crop_scale_min: float = 1.0  # smallest random-crop area; 1.0 = no crop (crops cut small objects and corner triggers)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool = False  # convolutions in NHWC order: faster ResNets on CPU; the last bits of the numbers differ
    workers: int = 0  # DataLoader workers (used when images are not cached in memory)
    cache_images: bool | None = None  # decode images once into memory; null = when small enough
    cpu_threads: int | None = None  # torch intra-op threads on CPU (null = the experiment's)


@dataclass(frozen=True)
class FinetuneRecipe:
    """Fine-tuning shared by every defense; a :class:`DefenseSpec` overrides what it must."""

    epochs: int = 10  # passes over the fine-tuning set
    batch_size: int = 64  # batch (the paper's 64)
    lr: float = 2e-3  # peak learning rate; tiny models trained from scratch need far more than the paper's 1e-5
    warmup: int = 10  # warm-up steps
    objective: str = "cleanclip"  # training objective (eftclip.training objectives)
    eda_synonyms: str = "table"  # EDA's synonyms: the shipped table gives the same numbers on every machine (wordnet: WordNet through NLTK)
    precision: str = "auto"  # as in PretrainRecipe
    channels_last: bool = False  # as in PretrainRecipe
    workers: int = 0  # as in PretrainRecipe
    cache_images: bool | None = None  # as in PretrainRecipe
    cpu_threads: int | None = None  # as in PretrainRecipe


@dataclass(frozen=True)
class DetectRecipe:
    """The mixed detection set and the settings of Algorithms 1 and 2."""

    scenes: int = 600  # images of the detection set (clean + triggered)
    triggered_share: float = 0.5  # share of them carrying the trigger (ground truth kept for scoring only)
    tau: int = DetectConfig.tau  # CLIP's list length
    theta: float | None = None  # oracle confidence threshold; null = the data source's, calibrated to its oracle
    mode: str = DetectConfig.mode  # robust | faithful
    min_share: float = DetectConfig.min_share  # robust q: unconfirmed share for a label to enter K
    min_count: int = DetectConfig.min_count  # robust m: least top-1 images for a label to enter K
    batch_size: int = 64  # images per detection batch (speed only)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the matrix."""

    name: str  # trigger name: badnet | blended | wanet | trojannet | trojannn
    params: dict = field(default_factory=dict)  # overrides of the data source's attack defaults
    poison_rate: float | None = None  # share of training pairs poisoned; null = the experiment's


@dataclass(frozen=True)
class DefenseSpec:
    """One fine-tuning defense: which set it trains on, and how its recipe differs."""

    name: str  # row key in every table (eftclip, eftclip_paper, cleanclip, cleanclip_large, ...)
    set: str  # fine-tuning set builder (eftclip.pipeline.defenses.SET_BUILDERS)
    scale: float = 1.0  # pairs = scale x the experiment's budget
    unaffected_ratio: float = 0.25  # R of the curated sets: share for labels detection did not find affected
    unlearn_share: float = 0.0  # share of the set taken from flagged images captioned with what is there
    stamp_share: float = 0.0  # "eftclip_stamp": share of the set's pairs stamped with the recovered trigger
    profile: str = "second_look"  # profile the "eftclip" set's pool pairs follow: second_look | paper
    objective: str | None = None  # overrides FinetuneRecipe.objective
    lr: float | None = None  # overrides FinetuneRecipe.lr
    epochs: int | None = None  # overrides FinetuneRecipe.epochs
    anchor_weight: float = 0.0  # clean-feature anchor to the suspect model's embeddings (0 = off)


@dataclass(frozen=True)
class RoclipSpec:
    """RoCLIP pre-training on one attack's poisoned data (the paper's Table 4)."""

    attack: str = ""  # which attack's poisoned data ("" = no RoCLIP run)
    pool_size: int = 1024  # captions kept in the matching pool
    period: int = 2  # match images to the pool every this many epochs


DEFAULT_DEFENSES: tuple[DefenseSpec, ...] = (
    # ours: unlearning pairs (flagged images captioned with what the second look found) and pool pairs
    # stamped with the recovered trigger under their true captions; plain contrastive at a gentle lr,
    # since these pairs carry the repair and CleanCLIP's in-modal term costs clean accuracy
    DefenseSpec(name="eftclip", set="eftclip_stamp", unlearn_share=0.1, stamp_share=0.1, objective="clip", lr=5e-4),
    DefenseSpec(name="eftclip_paper", set="curated"),
    DefenseSpec(name="cleanclip", set="random"),
    DefenseSpec(name="cleanclip_large", set="random", scale=3.0),
)
