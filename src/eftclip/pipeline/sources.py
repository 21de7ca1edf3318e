"""Data sources: where an experiment's splits, oracle and attack defaults come from.

Every source gives the same typed splits (a dict with ``train_csv``, ``pool_csv``,
``detect_csv``, ``eval`` (a zero-shot ImageFolder), ``classnames`` (a JSON file) and
``classnames_list``), the oracle that suits it, and trigger parameters scaled to its
images.  The built-in world (:mod:`eftclip.pipeline.world_source`) and a labelled image
folder (:class:`FolderSource`, CIFAR-10 or the user's own) are registered here by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eftclip.errors import EftclipError
from eftclip.pipeline.recipes import PretrainRecipe, speed_fields, without_legacy_defaults


class Source(Protocol):
    """What the pipeline asks of a data source (its settings are a frozen dataclass ``spec``)."""

    spec: Any
    attack_defaults: dict[str, dict]  # trigger name -> parameters scaled to this source's images
    templates: tuple[str, ...] | str  # default zero-shot prompts (a list, or a load_templates spec)
    theta: float  # the oracle confidence threshold calibrated to this source's oracle

    def prepare(self, folder: Path, seed: int, env: dict) -> dict: ...

    def train_oracle(self, folder: Path, splits: dict, seed: int, env: dict) -> dict: ...

    def oracle_args(self, oracle: dict, splits: dict, templates: list[str], device: str) -> dict: ...

    def poison_options(self, splits: dict, target: str) -> dict: ...

    def surrogate_images(self, splits: dict) -> list[str]: ...  # the attacker's own images (paths), never the test set

    def pool_size(self) -> int: ...

    def image_size(self) -> int: ...

    def truth(self, splits: dict, detect_csv: str) -> tuple[dict, dict]: ...

    def check_target(self, target: str) -> None: ...


SOURCES: dict[str, type] = {}


def register(name: str):
    def deco(cls: type) -> type:
        SOURCES[name] = cls
        return cls

    return deco


def build_source(values: dict, *, where: str = "source") -> Source:
    """A source from its YAML mapping ``{kind: NAME, ...settings}``."""
    from eftclip.config import from_mapping

    values = dict(values or {})
    kind = values.pop("kind", "world")
    _load_builtin_sources()
    if kind not in SOURCES:
        raise EftclipError(f"{where}.kind: unknown data source '{kind}' (known: {', '.join(sorted(SOURCES))})")
    cls = SOURCES[kind]
    return cls(from_mapping(cls.Spec, values, source=where))


def source_mapping(source: Source) -> dict:
    """The source's settings as plain data, with its kind (what the cache keys hash)."""
    from eftclip.config import to_dict

    kind = next(name for name, cls in SOURCES.items() if isinstance(source, cls))
    return {"kind": kind, **without_legacy_defaults(to_dict(source.spec))}


def _load_builtin_sources() -> None:
    import eftclip.pipeline.world_source  # noqa: F401  (registers "world")


# --------------------------------------------------------------------------- a labelled image folder


@dataclass(frozen=True)
class FolderOracleSpec:
    """The ``reference`` oracle over a folder: regions from pixels named by a clean labeller.

    The labeller is a CLIP pre-trained only on the ``reference`` split (D_e): it never saw a
    poisoned pair, nor the detection images.
    """

    labeller: PretrainRecipe = field(default_factory=lambda: PretrainRecipe(
        model="eftclip-tiny-rn", epochs=30, lr=2e-3, warmup=100, crop_scale_min=0.9))  # its pre-training
    regions: str = "grid"  # region proposals: grid | felzenszwalb | slic | foreground
    region_kwargs: dict = field(default_factory=dict)  # keyword arguments of the region method
    include_image: bool = True  # also score the whole image as one region (objects that fill the frame)
    min_area: float = 0.05  # kept regions' box area, fraction of the image
    max_area: float = 1.0  # largest kept region's box area
    max_regions: int = 16  # regions kept per image (largest first)


@dataclass(frozen=True)
class FolderSpec:
    """A labelled ImageFolder (``root/train/<class>/*``, ``root/test/<class>/*``) and its splits."""

    root: str = "../shared/data/cifar10"  # the folder (relative to the working directory)
    classnames: str = "cifar10"  # display names: cifar10 | imagenet1k | JSON file ("" = folder names)
    caption_templates: str = "cifar10"  # caption templates (eftclip.data.zeroshot.load_templates spec)
    train: int | None = None  # pre-training pairs; null = every image the other splits leave
    pool: int = 5000  # clean fine-tuning pool
    reference: int = 5000  # retained clean split D_e (the oracle's labeller trains on it only)
    detect: int = 1000  # held-out clean images for the mixed detection set
    eval_per_class: int | None = None  # evaluate on the first N test images per class (null = all)
    oracle: FolderOracleSpec = field(default_factory=FolderOracleSpec)  # the detection oracle


@register("folder")
class FolderSource:
    """CIFAR-10 or the user's own labelled folder, captioned from templates."""

    Spec = FolderSpec
    # trigger parameters for 32 px photos
    attack_defaults = {
        "badnet": {"pattern": "noise", "size": 4, "position": "random"},
        "blended": {"alpha": 0.2, "pattern_size": 32},
        "wanet": {"k": 4, "s": 0.5},
        "trojannet": {"cell_size": 2, "position": "random"},
        "trojannn": {"size": 4, "position": "random", "steps": 100},
    }
    templates = "cifar10"
    theta = 0.3  # a CLIP labeller's softmax over ten classes rarely passes 0.5 on a 32 px photo

    def __init__(self, spec: FolderSpec):
        self.spec = spec
        root = Path(spec.root)
        for part in ("train", "test"):
            if not (root / part).is_dir():
                raise EftclipError(f"source.root: {root / part} not found (expected an ImageFolder with train/ "
                                   "and test/)")

    def prepare(self, folder: Path, seed: int, env: dict) -> dict:
        from eftclip.data.zeroshot import load_classnames, load_templates
        from eftclip.pipeline.imagefolder_captions import make_splits

        s = self.spec
        root = Path(s.root).resolve()
        sizes = {"train": s.train, "pool": s.pool, "reference": s.reference, "detect": s.detect}
        m = make_splits(root / "train", folder, sizes=sizes, templates=load_templates(s.caption_templates),
                        classnames=load_classnames(s.classnames) if s.classnames else None, seed=seed)
        csv = {k: v["csv"] for k, v in m["splits"].items()}
        eval_dir = str(root / "test") if not s.eval_per_class else _eval_subset(root / "test", folder, s.eval_per_class)
        return {"train_csv": csv["train"], "pool_csv": csv["pool"], "reference_csv": csv["reference"],
                "detect_csv": csv["detect"], "eval": eval_dir, "classnames": m["classnames_file"],
                "classnames_list": list(m["classnames"]), "surrogate": str(root / "train"),
                "counts": {k: v["n"] for k, v in m["splits"].items()}}

    def train_oracle(self, folder: Path, splits: dict, seed: int, env: dict) -> dict:
        from eftclip.pipeline import steps

        ctx = steps.Context(out=folder, seed=seed, device=env.get("device", "cpu"), templates=[], target="",
                            progress=env.get("progress", True))
        recipe = self.spec.oracle.labeller
        return steps.pretrain(ctx, "labeller", splits["reference_csv"], recipe, train_args=speed_fields(recipe))

    def oracle_args(self, oracle: dict, splits: dict, templates: list[str], device: str) -> dict:
        o = self.spec.oracle
        return {"labeller_checkpoint": oracle["checkpoint"], "vocabulary": list(splits["classnames_list"]),
                "templates": list(templates), "regions": o.regions, "region_kwargs": dict(o.region_kwargs),
                "include_image": o.include_image, "min_area": o.min_area, "max_area": o.max_area,
                "max_regions": o.max_regions, "device": device}

    def poison_options(self, splits: dict, target: str) -> dict:
        return {}

    def surrogate_images(self, splits: dict) -> list[str]:
        """The training ImageFolder's images (the attacker's own), in ImageFolder order."""
        from eftclip.data.zeroshot import ImageFolderSet

        return [path for path, _ in ImageFolderSet(splits["surrogate"]).samples]

    def pool_size(self) -> int:
        return self.spec.pool

    def image_size(self) -> int:
        """The side of the folder's first training image (the images of such a folder share one size)."""
        from PIL import Image

        first = next((p for p in sorted((Path(self.spec.root) / "train").rglob("*")) if p.is_file()), None)
        if first is None:
            raise EftclipError(f"source.root: {Path(self.spec.root) / 'train'} holds no image")
        with Image.open(first) as img:
            return max(img.size)

    def truth(self, splits: dict, detect_csv: str) -> tuple[dict, dict]:
        """``(objects, triggered)`` per detection image (its class label): for scoring only."""
        from eftclip.detection.profile_truth import truth_from_label_column

        return truth_from_label_column(detect_csv)

    def check_target(self, target: str) -> None:
        from eftclip.data.zeroshot import load_classnames

        if self.spec.classnames:
            names = load_classnames(self.spec.classnames)
            if target not in names:
                raise EftclipError(f"target: '{target}' is not a class of {self.spec.classnames} "
                                   f"({', '.join(names)}); ASR needs the target among the classes")


def _eval_subset(test_root: Path, folder: Path, per_class: int) -> str:
    """An ImageFolder of the first ``per_class`` test images per class, as symlinks (nothing copied)."""
    from eftclip.data.zeroshot import ImageFolderSet

    ds = ImageFolderSet(test_root, max_per_class=per_class)
    for path, c in ds.samples:
        link = folder / "eval" / ds.classes[c] / Path(path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path)
    return str(folder / "eval")
