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

__all__ = ["ORACLES", "BaseOracle", "Found", "Oracle", "OracleResult", "create_oracle"]


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
    # ultralytics FastSAM (extra "fastsam"): weights_path=PATH to local weights; segments
    # everything, then a clean open_clip model (clip_model=NAME, clip_checkpoint=PATH or
    # clip_bundle=ClipBundle) scores each mask's crop against the prompts.
    "fastsam": _lazy("fastsam", "FastSAMOracle"),
    # transformers OWLv2 (extra "hf"): model_path=local folder; sam_path=folder adds SAM masks.
    "owlv2": _lazy("owlv2", "Owlv2Oracle"),
    # transformers Grounding DINO (extra "hf"): model_path=local folder; sam_path as above.
    "grounding-dino": _lazy("grounding_dino", "GroundingDinoOracle"),
}


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
