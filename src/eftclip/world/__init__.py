"""The built-in synthetic world: scenes of flat-coloured shapes on textured
backgrounds, captions written from them, a zero-shot evaluation set, and the
world's reference oracle parts (class-agnostic region proposals and a region
classifier trained only on the clean reference split)."""

from eftclip.world.categories import DEFAULT_CATEGORIES, SHAPES
from eftclip.world.synth import BACKGROUND_CLASS, SIZES, WorldSize, rle_decode, rle_encode, synth, world_paths

__all__ = [
    "BACKGROUND_CLASS",
    "DEFAULT_CATEGORIES",
    "SHAPES",
    "SIZES",
    "WorldSize",
    "rle_decode",
    "rle_encode",
    "synth",
    "world_paths",
]
from eftclip.world.region_classifier import RegionClassifier, load_region_classifier, train_region_classifier  # noqa: E402
from eftclip.world.regions import propose  # noqa: E402

__all__ += ["RegionClassifier", "load_region_classifier", "train_region_classifier", "propose"]
