"""Safe checkpoint reading and writing.

The project writes ``X.safetensors`` (the weights) plus ``X.json`` (what
architecture they belong to and how they were made), both atomically.

It reads, in this order of preference:

* safetensors files (its own, or anyone's);
* torch files, ONLY through ``torch.load(..., weights_only=True)``: a file
  holding arbitrary pickled objects is refused with an
  :class:`~eftclip.errors.EftclipError`, never unpickled;

in the layouts

* open_clip: a bare state dict, or ``{"state_dict": ..., "epoch": ..., ...}``
  from its training script; ``module.`` prefixes from DDP are stripped;
* OpenAI CLIP: a bare state dict with ``visual.*``, ``transformer.*``,
  ``token_embedding.weight``, ``positional_embedding``, ``text_projection``,
  ``logit_scale`` and ``ln_final.*``.  These are exactly the key names of
  open_clip's ``CLIP`` class (the non-custom-text models), so no renaming is
  needed; the ``input_resolution``/``context_length``/``vocab_size`` entries
  of OpenAI's TorchScript state dicts are dropped, fp16 tensors are cast by
  ``load_state_dict``; for custom-text models (``CustomTextCLIP``) the text
  keys are moved under ``text.``;
* CleanCLIP: ``{"epoch", "name", "state_dict", "optimizer"}`` whose state dict
  is OpenAI-format, with or without ``module.``.

TorchScript archives (OpenAI's original ``*.pt`` downloads) are refused: they
are programs, not weights; ``eftclip convert`` (:mod:`eftclip.models.convert`)
reads only their tensors and writes a safetensors checkpoint once.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from eftclip.errors import EftclipError
from eftclip.io import atomic_path, json_default, read_json, write_json

#: ``format`` field of the JSON side file written by :func:`save_checkpoint`
SIDECAR_FORMAT = "eftclip-checkpoint"
SIDECAR_VERSION = 1

# keys of OpenAI's TorchScript state dicts that are attributes, not weights
_OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")
# prefixes added by wrappers: DistributedDataParallel, torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# top-level text-tower keys of the OpenAI/CLIP layout, nested under "text." in CustomTextCLIP
_TEXT_KEYS = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")
# how many offending keys an error message lists
_SHOW = 5


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON side file of checkpoint ``path`` (``X.safetensors`` -> ``X.json``)."""
    path = Path(path)
    return path.with_suffix(".json")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DDP keeps the real model in .module, torch.compile in ._orig_mod
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    model_name: str,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and a JSON side file.

    Args:
        model: an open_clip model (DDP or ``torch.compile`` wrappers are unwrapped).
        path: destination; ``.safetensors`` is appended when it has no suffix.
        model_name: the open_clip architecture name the weights belong to.
        meta: JSON-able description of how the weights were made (run config,
            epoch, data, attack...), stored as ``meta`` in the side file.

    Returns:
        The path of the ``.safetensors`` file.  Both files are written through
        a temporary file and renamed, so an interrupted save leaves the previous
        pair (if any) intact.  The side file is written last: a ``.json`` beside a
        ``.safetensors`` means the weights are complete.
    """
    from safetensors.torch import save_file

    import eftclip
    from eftclip.models.factory import model_config

    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors":
        raise EftclipError(f"{path}: checkpoints are written as .safetensors, not {path.suffix!r}")
    cfg = model_config(model_name)
    meta = dict(meta or {})
    try:  # before anything is written, so that a bad meta leaves the old pair intact
        json.dumps(meta, default=json_default)
    except (TypeError, ValueError) as exc:
        raise EftclipError(f"{sidecar_path(path)}: checkpoint meta is not JSON-able ({exc})") from exc
    model = _unwrap(model)
    # clone: safetensors refuses tensors that share storage, and the copy is contiguous
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tok_len = int(cfg.get("text_cfg", {}).get("context_length", 77))
    metadata = {"eftclip_model_name": model_name, "eftclip_version": eftclip.__version__}
    with atomic_path(path) as tmp:
        save_file(state, os.fspath(tmp), metadata=metadata)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "weights": path.name,
        "model_name": model_name,
        "tokenizer": {
            "name": model_name,  # open_clip.get_tokenizer(model_name) rebuilds it
            "context_length": tok_len,
        },
        "eftclip_version": eftclip.__version__,
        "model_cfg": cfg,
        "meta": meta,
    }
    write_json(sidecar_path(path), sidecar)
    return path



def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON side file of checkpoint ``path``, or None when there is none."""
    side = sidecar_path(path)
    if not side.is_file() or side == Path(path):
        return None
    data = read_json(side)
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        return None  # some other JSON that happens to sit beside it
    return data


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _looks_like_safetensors(path: Path) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON object; a torch
    # file starts with a zip ("PK") or pickle (0x80) signature instead
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    size = int.from_bytes(head[:8], "little")
    return 0 < size <= path.stat().st_size - 8


def _load_torch(path: Path) -> Any:
    if _is_torchscript(path):
        raise EftclipError(
            f"{path}: is a TorchScript archive (a program, such as OpenAI's original .pt "
            f"downloads), not a weights-only checkpoint; eftclip will not execute it. Convert it "
            f"once, reading only its tensors: eftclip convert {path} --model NAME "
            f"--out weights.safetensors (OpenAI's models: NAME-quickgelu, e.g. ViT-B-32-quickgelu)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        why = next((ln for ln in first if "Unsupported" in ln or "GLOBAL" in ln), "")
        raise EftclipError(
            f"{path}: not a weights-only checkpoint (it pickles Python objects other than "
            f"tensors and plain containers{': ' + why.strip() if why else ''}); eftclip will not "
            f"unpickle it. Save only the state dict (tensors), or convert it to safetensors."
        ) from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file at all
        raise EftclipError(f"{path}: cannot read as a torch checkpoint ({type(exc).__name__}: {exc})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise EftclipError(f"{path}: not a valid safetensors file ({exc})") from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header (empty when none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise EftclipError(f"{path}: not a valid safetensors file ({exc})") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint file as a flat ``{name: tensor}`` on CPU.

    ``*.safetensors`` (or any file with a safetensors header) is read with
    safetensors; anything else with
    ``torch.load(path, map_location="cpu", weights_only=True)`` and nothing
    else.  The container layouts of open_clip, OpenAI and CleanCLIP are
    unwrapped (``state_dict`` entry, ``module.``/``_orig_mod.`` prefixes).
    Names are returned as stored; fitting them to an architecture is
    :func:`load_weights_into`'s job.

    Raises:
        EftclipError: missing file, unreadable file, a pickle that is not
            weights-only, or a container without a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise EftclipError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        obj: Any = _load_safetensors(path)
    else:
        obj = _load_torch(path)

    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]  # open_clip / CleanCLIP training checkpoint
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and not any(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        state = obj["model"]  # {"model": state_dict, ...} as many trainers write
    elif isinstance(obj, Mapping):
        state = obj
    else:
        raise EftclipError(f"{path}: holds a {type(obj).__name__}, not a state dict")

    if not state:
        raise EftclipError(f"{path}: the state dict is empty")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise EftclipError(
            f"{path}: not a state dict of tensors; non-tensor entries: {', '.join(map(str, bad[:_SHOW]))}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    stripped = True
        if name in out:
            raise EftclipError(f"{path}: key {key!r} clashes with {name!r} once wrapper prefixes are removed")
        out[name] = value
    return out


def adapt_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename/reshape a foreign state dict to ``model``'s key layout (a new dict).

    Handles the OpenAI TorchScript scalars, OpenAI-layout text keys for
    custom-text models, and a scalar vs. 1-element ``logit_scale``/``logit_bias``.
    Keys it does not recognise are kept, for :func:`check_fits` to report.
    """
    target = model.state_dict()
    state = {k: v for k, v in state.items() if not (k in _OPENAI_SCALARS and k not in target)}
    has_text_tower = any(k.startswith("text.") for k in target)
    if has_text_tower and "text_projection" in state and "text_projection" not in target:
        state = {(f"text.{k}" if k.split(".")[0] in _TEXT_KEYS else k): v for k, v in state.items()}
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in target and state[key].shape != target[key].shape:
            if state[key].numel() == target[key].numel():
                state[key] = state[key].reshape(target[key].shape)
    return state


def check_fits(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str | os.PathLike,
    model_name: str,
) -> None:
    """Raise :class:`EftclipError` unless ``state`` has exactly ``model``'s keys and shapes.

    The message names the file, the architecture and a few offending keys of
    each kind (missing, unexpected, shape mismatch).
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in state and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOW])}{more}")
    raise EftclipError(
        f"{source}: weights do not fit architecture {model_name!r} ({'; '.join(parts)}); "
        f"pass the architecture they were trained with (--model NAME)"
    )


def load_weights_into(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    model_name: str,
) -> torch.nn.Module:
    """Read ``path`` (:func:`read_state_dict`), fit it to ``model`` and load it strictly.

    Returns ``model`` (modified in place).  Raises :class:`EftclipError` when the
    weights do not fit (see :func:`check_fits`).
    """
    state = adapt_state_dict(model, read_state_dict(path))
    check_fits(model, state, source=path, model_name=model_name)
    model.load_state_dict(state, strict=True)
    return model


def checkpoint_model_name(path: str | os.PathLike) -> str | None:
    """The architecture recorded with a checkpoint: side file first, then safetensors metadata."""
    side = read_sidecar(path)
    if side is not None:
        name = side.get("model_name")
        if not isinstance(name, str) or not name:
            raise EftclipError(f"{sidecar_path(path)}: has no 'model_name'")
        return name
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        name = safetensors_metadata(path).get("eftclip_model_name")
        if name:
            return name
    return None


def load_checkpoint(
    path: str | os.PathLike,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
):
    """Build the architecture of checkpoint ``path`` and load its weights.

    Args:
        path: a checkpoint file (see :func:`read_state_dict` for what is accepted).
        model_name: the open_clip architecture; when None it is read from the
            JSON side file (or the safetensors metadata) that
            :func:`save_checkpoint` writes.  Foreign checkpoints need it.
        device: where the model is placed.

    Returns:
        A :class:`~eftclip.models.factory.ClipBundle` (model in eval mode).
    """
    from eftclip.models.factory import create_model

    path = Path(path)
    if not path.is_file():
        raise EftclipError(f"{path}: checkpoint file not found")
    if model_name is None:
        model_name = checkpoint_model_name(path)
        if model_name is None:
            raise EftclipError(
                f"{path}: no architecture recorded with this checkpoint (no eftclip side file "
                f"{sidecar_path(path).name}); pass the model name (--model NAME, e.g. RN50, ViT-B-32)"
            )
    return create_model(model_name, checkpoint=path, device=device)
