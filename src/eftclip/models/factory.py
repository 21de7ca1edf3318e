"""Creating CLIP models through open_clip, never downloading weights.

Every model the project builds goes through :func:`create_model`, which calls
``open_clip.create_model_and_transforms`` with ``pretrained=None`` (open_clip
would otherwise fetch weights from a hub) and then, when asked, loads a
user's local checkpoint through :mod:`eftclip.models.checkpoints`.

The project's own tiny architectures live as open_clip JSON configs in
``eftclip/models/configs/`` and are registered with
``open_clip.add_model_config`` when this package is imported, so that
``create_model("eftclip-tiny-vit")`` works like ``create_model("ViT-B-32")``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import open_clip
import torch

from eftclip.errors import EftclipError

#: folder of the project's open_clip model configs (``<name>.json``)
CONFIG_DIR = Path(__file__).with_name("configs")

# schemas that make open_clip fetch configs or weights from the network
_REMOTE_SCHEMAS = ("hf-hub:",)


@dataclass(frozen=True)
class ClipBundle:
    """A CLIP model with the transforms and tokenizer that belong to it.

    ``model`` is an ``open_clip`` ``CLIP``/``CustomTextCLIP`` module, returned
    in eval mode on the requested device (training code calls ``.train()``).
    ``preprocess_train``/``preprocess_val`` map a PIL RGB image to a float
    tensor ``(3, S, S)`` normalised with the model's mean/std, ``S`` being the
    config's ``vision_cfg.image_size``.  ``tokenizer`` maps a list of ``N``
    strings to a ``LongTensor (N, context_length)``.
    """

    model: torch.nn.Module  # the open_clip model (eval mode)
    preprocess_train: Callable  # PIL RGB -> float tensor (3, S, S), with open_clip's train augmentation
    preprocess_val: Callable  # PIL RGB -> float tensor (3, S, S), resize + centre crop
    tokenizer: Callable  # list[str] -> LongTensor (N, context_length)
    name: str  # open_clip architecture name, e.g. "eftclip-tiny-vit" or "RN50"
    checkpoint: str | None = None  # local weights file it was loaded from; None for random init

    @property
    def context_length(self) -> int:
        """Number of tokens the text tower takes (the tokenizer pads/truncates to it)."""
        return int(self.tokenizer.context_length)

    @property
    def image_size(self) -> int:
        """Side in pixels of the square images the vision tower takes."""
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def device(self) -> torch.device:
        """Device holding the model's parameters."""
        return next(self.model.parameters()).device


def register_configs(path: str | os.PathLike = CONFIG_DIR) -> None:
    """Register a folder (or a single ``.json``) of open_clip model configs.

    The world engineer, or a user with an architecture of their own, can add
    configs this way; the file stem becomes the model name.
    """
    path = Path(path)
    if not path.exists():
        raise EftclipError(f"{path}: model config file or folder not found")
    open_clip.add_model_config(path)


def list_models() -> list[str]:
    """Names of every architecture open_clip can build here (built-in and project)."""
    return open_clip.list_models()


def model_config(name: str) -> dict[str, Any]:
    """The open_clip config dict of architecture ``name`` (a copy).

    Raises :class:`EftclipError` listing similar names when ``name`` is unknown.
    """
    _check_name(name)
    cfg = open_clip.get_model_config(name)
    assert cfg is not None  # _check_name guarantees it
    return cfg


def _check_name(name: str) -> None:
    if any(name.startswith(s) for s in _REMOTE_SCHEMAS):
        raise EftclipError(
            f"model {name!r}: eftclip never downloads models; give an architecture name "
            f"and a local checkpoint file instead"
        )
    if name not in open_clip.list_models():
        known = open_clip.list_models()
        close = [m for m in known if name.lower().split("-")[0] in m.lower()][:8]
        hint = close or [m for m in known if m.startswith("eftclip-")] + ["RN50", "ViT-B-32"]
        raise EftclipError(
            f"unknown model architecture {name!r}; some known ones: {', '.join(hint)} "
            f"({len(known)} in all, see eftclip.models.list_models())"
        )


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    # open_clip logs "No pretrained weights loaded ... initialized randomly" on the
    # root logger for every random init; that is the expected case here.
    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    filt = _Drop()
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)


def create_model(
    name: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> ClipBundle:
    """Build architecture ``name`` with its transforms and tokenizer.

    Args:
        name: an open_clip architecture (``"RN50"``, ``"ViT-B-32"``, or a project
            config such as ``"eftclip-tiny-vit"``).  Never a pretrained tag or a
            hub name: nothing is downloaded.
        checkpoint: optional local weights file (safetensors, or a weights-only
            torch file in open_clip, OpenAI or CleanCLIP layout; see
            :func:`eftclip.models.checkpoints.read_state_dict`).  Without it the
            model is randomly initialised (by torch's global generator, which
            this function does not reseed).
        device: where the model is placed.

    Returns:
        A :class:`ClipBundle` whose model is in eval mode.
    """
    _check_name(name)
    with _quiet_open_clip():
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name,
            pretrained=None,
            pretrained_image=False,
            pretrained_text=False,  # HF text towers would otherwise fetch weights
            device="cpu",
        )
    tokenizer = open_clip.get_tokenizer(name)
    cfg_len = open_clip.get_model_config(name)["text_cfg"].get("context_length")
    if cfg_len is not None and int(tokenizer.context_length) != int(cfg_len):
        raise EftclipError(
            f"model {name!r}: tokenizer context length {tokenizer.context_length} differs from "
            f"the config's text_cfg.context_length {cfg_len}"
        )
    if checkpoint is not None:
        from eftclip.models.checkpoints import load_weights_into

        load_weights_into(model, checkpoint, model_name=name)
    model = model.to(device).eval()
    return ClipBundle(
        model=model,
        preprocess_train=preprocess_train,
        preprocess_val=preprocess_val,
        tokenizer=tokenizer,
        name=name,
        checkpoint=None if checkpoint is None else os.fspath(checkpoint),
    )
