"""Oracles: what a prompt-based detector or segmenter can really find in an image.

``create_oracle(name, **kwargs)`` builds one backend from :data:`ORACLES`.
Every backend follows :class:`~eftclip.oracles.base.Oracle`:
``find(image HWC uint8 RGB, prompts) -> OracleResult(found=[Found(label, score,
box_xyxy, mask)], unknown=[prompts it cannot represent])`` and ``find_batch``.
Backend modules (and their heavy imports) load only when their factory is called.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from eftclip.errors import EftclipError
from eftclip.oracles.base import BaseOracle, Found, Oracle, OracleResult

__all__ = ["DEVICE_CROPS", "MODEL_ARGS", "ORACLES", "TORCH_DEVICE", "BaseOracle", "Found", "Oracle", "OracleResult",
           "create_oracle", "detection_kwargs", "model_kwargs"]


def _lazy(module: str, cls: str) -> Callable[..., Oracle]:
    def factory(**kwargs: Any) -> Oracle:
        return getattr(importlib.import_module(f"eftclip.oracles.{module}"), cls)(**kwargs)

    factory.__name__ = f"create_{module}"
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"Build :class:`eftclip.oracles.{module}.{cls}`; see its docstring for the keyword arguments."
    return factory


ORACLES: dict[str, Callable[..., Oracle]] = {
    # Class-agnostic regions (scikit-image segmentation, foreground components or a grid)
    # named by a clean labeller: labeller=<callable with .classnames> | labeller_checkpoint=PATH
    # (a clean open_clip checkpoint) | labeller_bundle=ClipBundle; regions="felzenszwalb"|...
    "reference": _lazy("reference", "ReferenceOracle"),
    # A closed-vocabulary ONNX detector run by onnxruntime: model_path=PATH (.onnx),
    # classnames_path=PATH (one name a line), decoder="fastestdet"; prompts mapped by
    # vocabulary.VocabularyMapper.  Missing file -> EftclipError naming it.
    "onnx-detector": _lazy("onnx_detector", "OnnxDetectorOracle"),
    # ultralytics FastSAM (extra "fastsam"): weights_path=PATH to local weights, or a release name
    # (FastSAM-s.pt, FastSAM-x.pt) from ultralytics' weights folder; segments
    # everything, then a clean open_clip model (clip_model=NAME, clip_checkpoint=PATH or
    # clip_bundle=ClipBundle) scores each mask's crop against the prompts.
    "fastsam": _lazy("fastsam", "FastSAMOracle"),
    # transformers OWLv2 (extra "hf"): model_path=local folder or hub id; sam_path=folder or hub id adds SAM masks.
    "owlv2": _lazy("owlv2", "Owlv2Oracle"),
    # transformers Grounding DINO (extra "hf"): model_path=local folder or hub id; sam_path as above.
    "grounding-dino": _lazy("grounding_dino", "GroundingDinoOracle"),
}


#: the keyword argument of each backend that names its weights (what --oracle-model sets)
MODEL_ARGS: dict[str, str] = {
    "onnx-detector": "model_path",
    "fastsam": "weights_path",
    "owlv2": "model_path",
    "grounding-dino": "model_path",
}


#: backends whose boxes a SAM (sam_path) can refine into masks
SAM_REFINED = frozenset({"owlv2", "grounding-dino"})


#: backends that run on a torch device (``device``: their networks and clean labellers)
TORCH_DEVICE = frozenset({"reference", "fastsam", "owlv2", "grounding-dino"})

#: backends that can keep letterbox, masks and crops on their device (``device_crops``) and leave the
#: masks the detection step never reads on it (``keep_masks``)
DEVICE_CROPS = frozenset({"fastsam"})


def detection_kwargs(name: str, device: str, device_crops: bool | None) -> dict[str, Any]:
    """What the detection step adds to backend ``name``'s keyword arguments (the user's own win):
    its ``--device``, its ``--device-crops`` setting, and no masks, as it reads boxes and scores only."""
    out: dict[str, Any] = {"device": device} if name in TORCH_DEVICE else {}
    if name in DEVICE_CROPS:
        out.update(device_crops=device_crops, keep_masks=False)
    return out


def model_kwargs(name: str, model: str | None = None, sam: str | None = None) -> dict[str, str]:
    """Backend ``name``'s keyword arguments for weights ``model`` (folder, file or hub id) and a SAM.

    ``{}`` when neither is given; EftclipError naming the flag when the backend takes no such weights.
    """
    out: dict[str, str] = {}
    if model is not None:
        if name not in MODEL_ARGS:
            raise EftclipError(f"--oracle-model: oracle {name!r} takes no weights; those that do: "
                               f"{', '.join(sorted(MODEL_ARGS))}")
        out[MODEL_ARGS[name]] = model
    if sam is not None:
        if name not in SAM_REFINED:
            raise EftclipError(f"--sam-model: only owlv2 and grounding-dino refine boxes with SAM, not {name!r}")
        out["sam_path"] = sam
    return out


def create_oracle(name: str, **kwargs: Any) -> Oracle:
    """Build the oracle registered as ``name`` with the backend's keyword arguments.

    Unknown ``name`` -> EftclipError listing the known ones; a missing weights
    file or folder -> EftclipError naming the path; a missing optional package
    -> MissingExtraError naming the extra.
    """
    try:
        factory = ORACLES[name]
    except KeyError:
        raise EftclipError(
            f"unknown oracle {name!r}; known oracles: {', '.join(sorted(ORACLES))}"
        ) from None
    return factory(**kwargs)
