"""The built-in synthetic world as a data source (the one pipeline module that imports it).

Its oracle is the ``reference`` backend over the world's flat-region proposals, named by a
small CNN trained only on the world's clean reference split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eftclip.errors import EftclipError
from eftclip.pipeline.sources import register

# which training scenes the attacker may poison: any, or only scenes of one object
# (one-object captions on busy scenes teach the model that busy scenes are the target)
POISON_SCENES = ("single", "any")
# how poisoned captions are phrased: the world's own style, or "a photo of a {}."
# (which shares the zero-shot prompts' phrasing and ties the backdoor to it)
POISON_CAPTIONS = ("world", "generic")


@dataclass(frozen=True)
class WorldSpec:
    """The built-in world and how its attacker poisons it."""

    size: str = "default"  # world preset (eftclip.world.SIZES): default | quick | tiny
    poison_scenes: str = "single"  # single | any (see POISON_SCENES)
    poison_captions: str = "world"  # world | generic (see POISON_CAPTIONS)
    oracle_epochs: int = 10  # training epochs of the oracle's region classifier (clean reference split only)

    def __post_init__(self) -> None:
        from eftclip.world import SIZES

        if self.size not in SIZES:
            raise EftclipError(f"source.size: unknown world size '{self.size}' (known: {', '.join(SIZES)})")
        if self.poison_scenes not in POISON_SCENES:
            raise EftclipError(f"source.poison_scenes: unknown '{self.poison_scenes}' "
                               f"(known: {', '.join(POISON_SCENES)})")
        if self.poison_captions not in POISON_CAPTIONS:
            raise EftclipError(f"source.poison_captions: unknown '{self.poison_captions}' "
                               f"(known: {', '.join(POISON_CAPTIONS)})")
        if self.oracle_epochs < 1:
            raise EftclipError(f"source.oracle_epochs must be >= 1, got {self.oracle_epochs}")


@register("world")
class WorldSource:
    """The built-in world: 32 px scenes of twelve shapes, with captions, boxes and masks."""

    Spec = WorldSpec
    # trigger parameters scaled to the world's 32 px images (the registry's are for 224 px photos)
    attack_defaults = {
        "badnet": {"pattern": "checkerboard", "size": 4, "position": "bottom-right"},
        "blended": {"alpha": 0.2, "pattern_size": 32},
        "wanet": {"k": 4, "s": 0.5},
        "trojannet": {"cell_size": 1, "position": "bottom-right"},
        "trojannn": {"size": 4, "position": "bottom-right"},
    }
    templates = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")
    theta = 0.5  # the region classifier's softmax confidence that counts as "found" (12 classes + background)

    def __init__(self, spec: WorldSpec):
        self.spec = spec

    def prepare(self, folder: Path, seed: int, env: dict) -> dict:
        from eftclip.io import read_json
        from eftclip.world import synth, world_paths

        root = folder / "world"
        paths = world_paths(root) if (root / "world.json").exists() else synth(root, seed=seed,
                                                                                size=self.spec.size, overwrite=True)
        paths = {k: str(v) for k, v in paths.items()}
        return {**paths, "classnames_list": list(read_json(paths["classnames"]))}

    def train_oracle(self, folder: Path, splits: dict, seed: int, env: dict) -> dict:
        from eftclip.world import train_region_classifier

        out = folder / "region_classifier.safetensors"
        path = train_region_classifier(splits["reference"], out, seed=seed, epochs=self.spec.oracle_epochs)
        return {"region_classifier": str(path)}

    def oracle_args(self, oracle: dict, splits: dict, templates: list[str], device: str) -> dict:
        return {"region_classifier": oracle["region_classifier"], "regions": "world"}

    def poison_options(self, splits: dict, target: str) -> dict:
        from eftclip.io import read_jsonl
        from eftclip.world.captions import poison_templates

        options: dict = {}
        if self.spec.poison_captions == "world":
            options["templates"] = poison_templates(target)
        if self.spec.poison_scenes == "single":
            # the meta file lists the scenes in the order of train.csv
            options["rows"] = [i for i, scene in enumerate(read_jsonl(splits["train_meta"]))
                               if len(scene["objects"]) == 1]
        return options

    def surrogate_images(self, splits: dict) -> list[str]:
        """The clean training scenes (the attacker's own data; the eval split is the test set), in CSV order."""
        from eftclip.data.captions import read_captions

        # the training scenes' images are checked where they are trained on, not again here
        return [r.image for r in read_captions(splits["train_csv"], check_images=False).records]

    def truth(self, splits: dict, detect_csv: str) -> tuple[dict, dict]:
        """``(objects, triggered)`` per detection image: for scoring only, never read by the defense."""
        from eftclip.world.truth import detection_truth

        return detection_truth(detect_csv, [splits["detect_meta"]])

    def image_size(self) -> int:
        import inspect

        from eftclip.world import synth

        return int(inspect.signature(synth).parameters["image_size"].default)

    def pool_size(self) -> int:
        from eftclip.world import SIZES

        return SIZES[self.spec.size].pool

    def check_target(self, target: str) -> None:
        from eftclip.world import DEFAULT_CATEGORIES

        if target not in DEFAULT_CATEGORIES:
            raise EftclipError(f"target: '{target}' is not a category of the built-in world "
                               f"(categories: {', '.join(DEFAULT_CATEGORIES)})")
