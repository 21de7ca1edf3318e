"""Creating CLIP models through open_clip, with weights from a file or by name.

Every model the project builds goes through :func:`create_model`, which calls
``open_clip.create_model_and_transforms`` without weights and then loads them
itself: a user's checkpoint file, or the file an open_clip pretrained tag or
``hf-hub:`` repo names, found (or downloaded) in the hub cache by
:mod:`eftclip.models.hub`.  Either way the file is read by
:mod:`eftclip.models.checkpoints` (safetensors, or ``weights_only`` torch
files), never by a free unpickler.

The project's own tiny architectures live as open_clip JSON configs in
``eftclip/models/configs/`` and are registered with
``open_clip.add_model_config`` when this package is imported, so that
``create_model("eftclip-tiny-vit")`` works like ``create_model("ViT-B-32")``.
An ``hf-hub:org/name`` architecture is read from the repo's cached
``open_clip_config.json``.
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
    checkpoint: str | None = None  # weights file it was loaded from (a hub cache file for tags); None: random init
    pretrained: str | None = None  # the open_clip tag or "hf-hub:org/name" the weights were named by, if any

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
    cfg = open_clip.get_model_config(_open_clip_name(name))
    assert cfg is not None  # _open_clip_name guarantees it
    return cfg


def _open_clip_name(name: str) -> str:
    """The name open_clip builds ``name`` by: ``local-dir:<cached snapshot>`` for ``hf-hub:`` names.

    open_clip would fetch an ``hf-hub:`` config ignoring the offline rule and the
    cache folder of this call; the cached snapshot folder is the same config.
    """
    from eftclip.models.hub import hub_config_dir, is_hub_name

    if is_hub_name(name):
        return f"local-dir:{hub_config_dir(name)}"
    _check_name(name)
    return name


def _check_name(name: str) -> None:
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


@contextlib.contextmanager
def _init_generator(seed: int | None):
    """open_clip initialises from torch's global generator: fork it and seed the fork when asked."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


def create_model(
    name: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> ClipBundle:
    """Build architecture ``name`` with its transforms and tokenizer, and load weights.

    Args:
        name: an open_clip architecture (``"RN50"``, ``"ViT-B-32"``, a project
            config such as ``"eftclip-tiny-vit"``) or ``"hf-hub:org/name"`` (the
            repo's ``open_clip_config.json``; its weights only with ``pretrained``).
        checkpoint: optional local weights file (safetensors, or a weights-only
            torch file in open_clip, OpenAI or CleanCLIP layout; see
            :func:`eftclip.models.checkpoints.read_state_dict`).
        pretrained: optional open_clip tag of ``name`` (``"openai"``,
            ``"laion2b_s34b_b79k"``) or ``"hf-hub:org/name"``: the weights file is
            taken from the hub cache, downloaded when online and missing
            (:func:`eftclip.models.hub.resolve_pretrained`), and read like
            ``checkpoint``.  A tag's preprocessing (mean, std, interpolation)
            replaces the architecture's.  Not together with ``checkpoint``.
            Without either the model is randomly initialised.
        device: where the model is placed.
        seed: the random initialisation's seed, drawn on a forked generator so
            the caller's global random state is left as it was.  ``None`` draws
            from torch's global generator, whose start seed is random per
            process: two runs then differ.

    Returns:
        A :class:`ClipBundle` whose model is in eval mode.

    Raises:
        EftclipError: unknown name or tag, weights that do not fit, or weights
            neither cached nor downloadable (the message says how to get them).
    """
    if checkpoint is not None and pretrained is not None:
        raise EftclipError("give the weights once: a checkpoint file or a pretrained name, not both")
    overrides: dict = {}
    if pretrained is not None:
        from eftclip.models.hub import resolve_pretrained

        found = resolve_pretrained(name, pretrained)
        name, checkpoint, overrides = found.arch, found.weights, found.preprocess
    oc_name = _open_clip_name(name)
    with _quiet_open_clip(), _init_generator(seed):
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            oc_name,
            pretrained=None,
            load_weights=False,  # weights come only through checkpoints.load_weights_into
            pretrained_image=False,
            pretrained_text=False,  # HF text towers would otherwise fetch weights
            device="cpu",
            **overrides,
        )
        tokenizer = open_clip.get_tokenizer(oc_name)
    cfg_len = model_config(name)["text_cfg"].get("context_length")
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
        pretrained=pretrained,
    )
