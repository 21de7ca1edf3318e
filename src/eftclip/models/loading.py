"""One entry for every verb that loads a CLIP: ``--checkpoint`` or ``--model``/``--pretrained``.

``--checkpoint FILE [--model NAME]`` is eftclip's own checkpoint (or a foreign
one with its architecture).  ``--model NAME --pretrained TAG|FILE`` is what
open_clip users write: a tag (``openai``, ``laion2b_s34b_b79k``), an
``hf-hub:org/name`` repo, or a weights file.  ``--model hf-hub:org/name``
alone means that repo's architecture and weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from eftclip.errors import EftclipError
from eftclip.models.checkpoints import load_checkpoint
from eftclip.models.factory import ClipBundle, create_model
from eftclip.models.hub import is_hub_name, resolve_pretrained

# suffixes that make a --pretrained value a file name rather than a tag
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _as_file(pretrained: str) -> Path | None:
    """``pretrained`` as a weights file, None when it is a tag; EftclipError for a missing file."""
    path = Path(pretrained)
    if path.is_file():
        return path
    if not is_hub_name(pretrained) and (os.sep in pretrained or pretrained.endswith(_FILE_SUFFIXES)):
        raise EftclipError(f"--pretrained {pretrained}: weights file not found")
    return None


def _sources(checkpoint, model, pretrained) -> tuple[str | None, str | None]:
    """Check the flag combination; returns ``(checkpoint, pretrained)`` with hf-hub models filled in."""
    if checkpoint is not None and pretrained is not None:
        raise EftclipError("--checkpoint and --pretrained both given; pass one of them")
    if checkpoint is None and pretrained is None:
        if is_hub_name(model):
            return None, model
        raise EftclipError("no CLIP to load: pass --checkpoint FILE, or --model NAME --pretrained TAG|FILE "
                           "(or --model hf-hub:org/name)")
    if pretrained is not None and model is None and not is_hub_name(pretrained) and _as_file(pretrained) is None:
        raise EftclipError(f"--pretrained {pretrained}: a tag needs the architecture too (--model NAME)")
    return (None if checkpoint is None else os.fspath(checkpoint)), pretrained


def load_clip(
    *,
    checkpoint: str | os.PathLike | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
) -> ClipBundle:
    """Load the CLIP the user named (model in eval mode on ``device``).

    Args:
        checkpoint: a weights file (eftclip's ``.safetensors`` with its side file,
            or a foreign file with ``model``).
        model: the open_clip architecture, or ``"hf-hub:org/name"``.
        pretrained: an open_clip tag of ``model``, ``"hf-hub:org/name"``, or a
            weights file (read like ``checkpoint``).

    Raises:
        EftclipError: a bad combination, a missing file, an unknown tag, or
            weights that are neither cached nor downloadable.
    """
    checkpoint, pretrained = _sources(checkpoint, model, pretrained)
    if checkpoint is not None:
        return load_checkpoint(checkpoint, model_name=model, device=device)
    file = _as_file(pretrained)
    if file is not None:
        return load_checkpoint(file, model_name=model, device=device)
    return create_model(model or pretrained, pretrained=pretrained, device=device)


def resolve_clip_weights(
    *,
    checkpoint: str | os.PathLike | None = None,
    model: str | None = None,
    pretrained: str | None = None,
) -> tuple[str, str | None]:
    """``(weights file, architecture or None)`` for code that takes a checkpoint path.

    Fine-tuning reads its start from a file: a tag or ``hf-hub:`` name becomes
    the file in the hub cache (downloaded when online and missing) and the
    architecture to build it with.  A tag's own preprocessing is not carried
    (eftclip's checkpoints record the architecture only).
    """
    checkpoint, pretrained = _sources(checkpoint, model, pretrained)
    if checkpoint is not None:
        return checkpoint, model
    file = _as_file(pretrained)
    if file is not None:
        return os.fspath(file), model
    found = resolve_pretrained(model, pretrained)
    return os.fspath(found.weights), found.arch
