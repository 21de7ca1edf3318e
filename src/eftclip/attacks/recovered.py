"""A trigger recovered by the defense: a mask and a pattern read from PNG files.

Trigger reconstruction (:mod:`eftclip.detection.trigger_recovery`) ends in a
soft mask ``m`` (HW float in [0, 1]) and a pattern ``p`` (HWC uint8); this
trigger stamps them as::

    out = (1 - m) * image + m * p

so the recovered trigger can be measured (ASR "under the recovered trigger")
and stamped on clean pairs exactly like the attacks' own triggers.  It lives as
two PNG files (``mask.png``: L mode, ``round(255 m)``; ``pattern.png``: RGB) so
that ``params()`` stays JSON-able and ``RecoveredTrigger(**params)`` rebuilds it
from any folder.  It is deliberately not in the attacks' registry
(:data:`~eftclip.attacks.base.TRIGGERS`): it is the defender's estimate, not an
attack one can poison a dataset with by name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from eftclip.attacks.base import Trigger, TriggerResult, check_image, load_pattern_image
from eftclip.errors import EftclipError

__all__ = ["RecoveredTrigger", "stamp_mask_pattern", "save_recovered_trigger"]


def stamp_mask_pattern(image: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """``(1 - mask) * image + mask * pattern``, rounded: HWC uint8.

    ``image`` HWC uint8; ``mask`` HW float in [0, 1]; ``pattern`` HWC uint8, same H and W.
    """
    m = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)[..., None]
    mixed = (1.0 - m) * image.astype(np.float32) + m * pattern.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _resize(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HW float mask or HWC uint8 pattern to ``hw`` (height, width)."""
    from PIL import Image

    if array.shape[:2] == tuple(hw):
        return array
    if array.ndim == 2:
        im = Image.fromarray(array.astype(np.float32)).resize((hw[1], hw[0]), Image.BILINEAR)
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    im = Image.fromarray(array).resize((hw[1], hw[0]), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).copy()


@dataclass(frozen=True)
class RecoveredTrigger(Trigger):
    """A mask and a pattern recovered from a suspect model, stamped at a fixed place.

    Images of another size than the files get a bilinearly resized mask and
    pattern (the trigger is assumed to scale with the image).
    """

    name: ClassVar[str] = "recovered"

    mask_file: str  # PNG (L mode) of the mask, round(255 * m) with m in [0, 1]
    pattern_file: str  # PNG (RGB) of the pattern, same size as the mask

    def __post_init__(self) -> None:
        for name in ("mask_file", "pattern_file"):
            path = Path(getattr(self, name)).expanduser()
            if not path.is_file():
                raise EftclipError(f"recovered trigger: {name} {str(path)!r} is not an existing file")
            # absolute, so that params() in a manifest rebuilds the trigger from anywhere
            object.__setattr__(self, name, str(path.resolve()))
        mask, pattern = self._arrays
        if mask.shape != pattern.shape[:2]:
            raise EftclipError(f"recovered trigger {self.mask_file}: mask {mask.shape} and pattern "
                               f"{pattern.shape[:2]} differ in size")

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        try:
            with Image.open(self.mask_file) as im:
                mask = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        except OSError as exc:
            raise EftclipError(f"recovered trigger: mask_file {self.mask_file}: not a readable image ({exc})") from exc
        return mask, load_pattern_image(self.pattern_file, "pattern_file")

    @property
    def mask(self) -> np.ndarray:
        """The mask, HW float32 in [0, 1], at the size it was recovered."""
        return self._arrays[0]

    @property
    def pattern(self) -> np.ndarray:
        """The pattern, HWC uint8, at the size it was recovered."""
        return self._arrays[1]

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> TriggerResult:
        """Stamp the mask and pattern; ``rng`` is unused (the trigger is deterministic).

        The returned mask (HW bool) marks the pixels whose value changed.
        """
        image = check_image(image)
        hw = image.shape[:2]
        out = stamp_mask_pattern(image, _resize(self.mask, hw), _resize(self.pattern, hw))
        return TriggerResult(image=out, mask=np.any(out != image, axis=2))


def save_recovered_trigger(folder: str | Path, mask: np.ndarray, pattern: np.ndarray) -> RecoveredTrigger:
    """Write ``folder/mask.png`` and ``folder/pattern.png`` atomically and return the trigger they make.

    ``mask`` HW float in [0, 1] (stored as ``round(255 m)``); ``pattern`` HWC uint8 of the same H and W.
    """
    from PIL import Image

    from eftclip.io import atomic_path

    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim != 2 or pattern.shape != (*mask.shape, 3) or pattern.dtype != np.uint8:
        raise EftclipError(
            f"{folder}: a recovered trigger needs a mask HW and a pattern HWC uint8 of the same size, "
            f"got mask {mask.shape} and pattern {pattern.shape} {pattern.dtype}"
        )
    folder = Path(folder)
    paths = {"mask_file": folder / "mask.png", "pattern_file": folder / "pattern.png"}
    with atomic_path(paths["mask_file"]) as tmp:
        Image.fromarray(np.rint(np.clip(mask, 0, 1) * 255).astype(np.uint8)).save(tmp, format="PNG")
    with atomic_path(paths["pattern_file"]) as tmp:
        Image.fromarray(pattern).save(tmp, format="PNG")
    return RecoveredTrigger(**{k: str(v) for k, v in paths.items()})
