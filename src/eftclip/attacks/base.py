"""The trigger interface, the registry, and the one blending operation patch triggers share.

A trigger turns a clean image into a triggered one.  Following BackdoorBox's
idea (our own code), BadNet, Blended, TrojanNet and the Trojaning-style patch
are all a *pattern* plus an *alpha mask*, applied as::

    out = alpha * pattern + (1 - alpha) * image

with ``alpha`` in [0, 1] per pixel (1 = the pattern replaces the pixel, 0 = the
pixel is untouched).  WaNet is different: it resamples the image along a warp
grid (see :mod:`eftclip.attacks.wanet`).

Every trigger is a frozen dataclass whose fields are its parameters, so
``params()`` is JSON-able and ``create_trigger(trigger.name, **trigger.params())``
rebuilds an equal trigger.  Parameters may arrive as strings from the command
line (``size=8``); :func:`create_trigger` coerces them to the field types.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np

from eftclip.errors import EftclipError

__all__ = [
    "TRIGGERS",
    "Trigger",
    "TriggerResult",
    "blend",
    "check_image",
    "create_trigger",
    "load_pattern_image",
    "parse_position",
    "place_patch",
    "register_trigger",
]


@dataclass(frozen=True)
class TriggerResult:
    """What :meth:`Trigger.apply` returns.

    ``image``: the triggered image, HWC uint8 RGB, same shape as the input.
    ``mask``: HW bool, the pixels the trigger touched (a patch's square, the
    whole image for a blend, the pixels a warp changed).
    """

    image: np.ndarray
    mask: np.ndarray

    def box_xyxy(self) -> tuple[float, float, float, float] | None:
        """Bounding box of ``mask`` as XYXY pixels (x2/y2 exclusive), or None when empty."""
        ys, xs = np.nonzero(self.mask)
        if len(xs) == 0:
            return None
        return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


class Trigger:
    """Base of all triggers; subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str] = ""

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> TriggerResult:
        """Trigger ``image`` (HWC uint8 RGB).

        ``rng`` supplies the per-image randomness (a random position, WaNet's
        noise mode); the same generator state gives the same output.
        """
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The trigger's parameters as a JSON-able dict; ``create_trigger(name, **params)`` rebuilds it."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.init:
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


TRIGGERS: dict[str, type[Trigger]] = {}

T = TypeVar("T", bound=type[Trigger])


def register_trigger(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`Trigger` subclass under ``name``."""

    def deco(cls: T) -> T:
        if name in TRIGGERS and TRIGGERS[name] is not cls:
            raise ValueError(f"trigger name {name!r} registered twice")
        cls.name = name
        TRIGGERS[name] = cls
        return cls

    return deco


def create_trigger(name: str, **params: Any) -> Trigger:
    """Build the trigger registered as ``name`` from ``params``.

    String values (from ``--attack-param k=v``) are coerced to the field's
    type; unknown names and parameters, and values a trigger rejects, raise
    :class:`EftclipError` naming them.
    """
    cls = TRIGGERS.get(name)
    if cls is None:
        known = ", ".join(sorted(TRIGGERS)) or "(none)"
        raise EftclipError(f"unknown attack {name!r}; known attacks: {known}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in params.items():
        fname = key.replace("-", "_")
        if fname not in fields:
            raise EftclipError(
                f"attack {name!r}: unknown parameter {key!r} (known: {', '.join(fields)})"
            )
        kwargs[fname] = _coerce(name, fname, hints.get(fname, Any), value)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise EftclipError(f"attack {name!r}: {exc}") from exc


# --- coercion of parameter values -------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(trigger: str, field: str, hint: Any, value: Any) -> Any:
    """Coerce ``value`` (possibly a string from the CLI) to the type ``hint``."""
    where = f"attack {trigger!r}: parameter {field}"
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise EftclipError(f"{where} may not be empty")
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "") and type(None) in options:
        return None
    errors = []
    for opt in options:
        if opt is type(None):
            continue
        try:
            return _coerce_one(opt, value)
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    raise EftclipError(f"{where}: cannot use {value!r} ({'; '.join(errors)})")


try:  # ``X | Y`` unions are types.UnionType, ``Optional[X]`` is typing.Union
    from types import UnionType as _UnionType
except ImportError:  # pragma: no cover
    _UnionType = typing.Union  # type: ignore[assignment,misc]


def _coerce_one(kind: Any, value: Any) -> Any:
    if kind is Any:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, np.integer)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true/false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError("expected an integer")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError("expected a number")
    if kind is str:
        if isinstance(value, (str, Path)):
            return str(value)
        if isinstance(value, (list, tuple)) and len(value) == 2:  # a position given as [x, y]
            return f"{int(value[0])},{int(value[1])}"
        raise ValueError("expected a string")
    return value


# --- images, patterns, positions -------------------------------------------------------------


def check_image(image: Any) -> np.ndarray:
    """Check that ``image`` is HWC uint8 RGB and return it as an ndarray."""
    if not isinstance(image, np.ndarray):
        raise EftclipError(f"a trigger needs an HWC uint8 numpy image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EftclipError(
            f"a trigger needs an HWC uint8 RGB image, got shape {image.shape} dtype {image.dtype}"
        )
    return image


_NAMED_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center", "random")


def parse_position(value: str) -> str | tuple[int, int]:
    """Parse a patch position: a name in ``_NAMED_POSITIONS`` or ``"x,y"`` (top-left corner, pixels)."""
    text = str(value).strip().lower().replace("_", "-")
    if text in _NAMED_POSITIONS:
        return text
    m = re.fullmatch(r"\(?\s*(\d+)\s*[, ]\s*(\d+)\s*\)?", text)
    if m:
        return int(m.group(1)), int(m.group(2))
    raise ValueError(
        f"position {value!r} is not one of {', '.join(_NAMED_POSITIONS)} or 'x,y' (non-negative pixels)"
    )


def place_patch(
    position: str, image_hw: tuple[int, int], patch_hw: tuple[int, int], rng: np.random.Generator | None
) -> tuple[int, int]:
    """Top-left corner ``(x, y)`` in pixels for a ``patch_hw`` patch on an ``image_hw`` image.

    ``random`` draws the corner uniformly from ``rng`` among the positions
    where the whole patch fits.  A patch larger than the image, or an ``x,y``
    that pushes it over the edge, is an :class:`EftclipError` naming the sizes.
    """
    H, W = image_hw
    h, w = patch_hw
    if h > H or w > W:
        raise EftclipError(f"trigger patch of {w}x{h} px is larger than the {W}x{H} px image")
    pos = parse_position(position)
    if isinstance(pos, tuple):
        x, y = pos
        if x + w > W or y + h > H:
            raise EftclipError(
                f"trigger patch of {w}x{h} px at x,y={x},{y} does not fit in the {W}x{H} px image"
            )
        return x, y
    if pos == "random":
        if rng is None:
            raise EftclipError("position 'random' needs a random generator")
        return int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
    return {
        "top-left": (0, 0),
        "top-right": (W - w, 0),
        "bottom-left": (0, H - h),
        "bottom-right": (W - w, H - h),
        "center": ((W - w) // 2, (H - h) // 2),
    }[pos]


def blend(
    image: np.ndarray, pattern: np.ndarray, alpha: np.ndarray | float, xy: tuple[int, int] = (0, 0)
) -> TriggerResult:
    """Apply ``alpha * pattern + (1 - alpha) * image`` over the region at ``xy``.

    ``image``: HWC uint8.  ``pattern``: hwc uint8 (h <= H, w <= W), placed with
    its top-left corner at ``xy`` (pixels).  ``alpha``: a scalar or an hw array
    of floats in [0, 1].  Pixels outside the region are returned unchanged;
    the mask is the region's pixels with ``alpha > 0``.
    """
    image = check_image(image)
    h, w = pattern.shape[:2]
    x, y = xy
    alpha_arr = np.broadcast_to(np.asarray(alpha, dtype=np.float32), (h, w))
    out = image.copy()
    region = image[y : y + h, x : x + w].astype(np.float32)
    a = alpha_arr[..., None]
    mixed = a * pattern.astype(np.float32) + (1.0 - a) * region
    out[y : y + h, x : x + w] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[y : y + h, x : x + w] = alpha_arr > 0
    return TriggerResult(image=out, mask=mask)


def load_pattern_image(path: str | Path, what: str = "pattern file") -> np.ndarray:
    """Read an image file as HWC uint8 RGB, with an error naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise EftclipError(f"{what} {path}: file not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise EftclipError(f"{what} {path}: not a readable image ({exc})") from exc


def resize_pattern(pattern: np.ndarray, hw: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize an HWC uint8 pattern to ``hw`` (height, width).

    ``nearest`` keeps noise patterns sharp at any scale (a bilinear resize
    would average noise towards grey when it shrinks it).
    """
    from PIL import Image

    if pattern.shape[:2] == tuple(hw):
        return pattern
    resample = Image.NEAREST if nearest else Image.BILINEAR
    im = Image.fromarray(pattern).resize((hw[1], hw[0]), resample=resample)
    return np.asarray(im, dtype=np.uint8).copy()


class PatchTrigger(Trigger):
    """A trigger that stamps a fixed patch at a position (BadNet, TrojanNet, Trojaning-style).

    Subclasses are dataclasses with ``position: str`` and ``alpha: float``
    fields and implement :meth:`patch`.
    """

    position: str
    alpha: float

    def patch(self) -> np.ndarray:
        """The patch, hwc uint8 RGB (the same on every image)."""
        raise NotImplementedError

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> TriggerResult:
        image = check_image(image)
        pattern = self.patch()
        xy = place_patch(self.position, image.shape[:2], pattern.shape[:2], rng)
        return blend(image, pattern, self.alpha, xy)


def check_position(position: str) -> str:
    """Validate a position for a dataclass ``__post_init__`` and return its canonical text."""
    pos = parse_position(position)
    return pos if isinstance(pos, str) else f"{pos[0]},{pos[1]}"


def check_alpha(alpha: float, *, allow_zero: bool = False) -> None:
    """Reject an opacity outside (0, 1] (or [0, 1])."""
    low_ok = alpha >= 0 if allow_zero else alpha > 0
    if not (low_ok and alpha <= 1):
        raise ValueError(f"alpha must be in {'[0' if allow_zero else '(0'}, 1], got {alpha}")
