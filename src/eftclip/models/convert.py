"""Convert a TorchScript CLIP archive (OpenAI's original ``*.pt``) to an eftclip checkpoint.

A TorchScript archive is a zip holding ``<name>/data.pkl`` (the module tree,
pickled), ``<name>/data/<key>`` (raw tensor storages), ``code/`` (the program)
and ``constants.pkl``.  ``torch.jit.load`` would compile and run that program;
this module never does.  It reads ``data.pkl`` with a restricted unpickler that
rebuilds only tensors (from the raw storages), ordered dicts, and inert
stand-ins for the ``__torch__.*`` module classes; any other global in the
pickle is refused with an :class:`~eftclip.errors.EftclipError` naming it.
The tensors, named by their attribute paths (``visual.conv1.weight``...), are
checked with open_clip's ``build_model_from_openai_state_dict`` and loaded
strictly into the named open_clip architecture, which is saved as
``.safetensors`` + ``.json`` side file (:func:`~eftclip.models.checkpoints.save_checkpoint`).
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from eftclip.errors import EftclipError

# storage classes a TorchScript pickle names, and the dtype of their raw bytes
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Inert stand-in for a pickled ``__torch__.*`` module: keeps its attribute dict, runs nothing."""

    type_name = "__torch__"

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    """What a storage class global unpickles to: just its dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    # torch._utils._rebuild_tensor_v2's arguments; requires_grad/hooks/metadata are dropped
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl`` into stand-ins and tensors, nothing else."""

    def __init__(self, fh, read_record: Callable[[str], bytes], source: Path):
        super().__init__(fh)
        self._read = read_record
        self._source = source
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            qual = f"{module}.{name}"
            if qual not in self._classes:  # one inert subclass per scripted type, for error messages
                self._classes[qual] = type(name, (_ScriptObject,), {"type_name": qual})
            return self._classes[qual]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise EftclipError(
            f"{self._source}: the archive's data.pkl names {module}.{name}, which is not a tensor, "
            f"storage or module attribute; refusing to unpickle it"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise EftclipError(f"{self._source}: unexpected persistent id {pid!r:.80} in data.pkl")
        _, kind, key, _location, numel = pid
        if key not in self._storages:
            raw = self._read(f"data/{key}")
            flat = torch.frombuffer(bytearray(raw), dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            if flat.numel() != int(numel):
                raise EftclipError(f"{self._source}: storage {key} holds {flat.numel()} values, data.pkl says {numel}")
            self._storages[key] = flat
        return self._storages[key]


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Tensors of the module tree under ``obj``, named by dotted attribute paths."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, _ScriptObject) and isinstance(getattr(obj, "state", None), dict):
        for key, value in obj.state.items():
            _collect(value, f"{prefix}.{key}" if prefix else str(key), out)


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The named tensors of a TorchScript archive, read without running its code.

    Returns ``{dotted attribute path: tensor}`` (CPU, the stored dtype): the
    parameters and buffers of every scripted submodule, plus any other tensor
    attribute (for OpenAI's CLIP: ``input_resolution``, ``context_length``,
    ``vocab_size`` when stored as tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise EftclipError(f"{path}: TorchScript file not found")
    if not zipfile.is_zipfile(path):
        raise EftclipError(f"{path}: not a TorchScript archive (not a zip file)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1 or not any("/code/" in n for n in names):
            raise EftclipError(f"{path}: not a TorchScript archive (no <name>/data.pkl with code/); "
                               f"a plain weights file needs no conversion: pass it with --checkpoint FILE --model NAME")
        root = pkl[0].split("/")[0]

        def read_record(name: str) -> bytes:
            try:
                return zf.read(f"{root}/{name}")
            except KeyError:
                raise EftclipError(f"{path}: record {root}/{name} is missing from the archive") from None

        with zf.open(pkl[0]) as fh:
            try:
                tree = _WeightsUnpickler(fh, read_record, path).load()
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise EftclipError(f"{path}: cannot read data.pkl ({type(exc).__name__}: {exc})") from None
    tensors: dict[str, torch.Tensor] = {}
    _collect(tree, "", tensors)
    if not tensors:
        raise EftclipError(f"{path}: the archive holds no tensors")
    return tensors


def convert_torchscript(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model_name: str,
) -> Path:
    """Convert TorchScript CLIP ``path`` to ``out`` (``.safetensors`` + ``.json``) for ``model_name``.

    The tensors (:func:`read_torchscript_tensors`) must form an OpenAI-layout
    CLIP state dict (checked with open_clip's
    ``build_model_from_openai_state_dict``) that fits ``model_name`` exactly
    (keys and shapes; fp16 values are widened exactly to the architecture's fp32).
    Returns the ``.safetensors`` path.
    """
    import open_clip

    from eftclip.models.checkpoints import adapt_state_dict, check_fits, save_checkpoint
    from eftclip.models.factory import create_model

    path = Path(path)
    state = read_torchscript_tensors(path)
    with torch.random.fork_rng(devices=[]):  # the throw-away init must not move the caller's RNG
        model = create_model(model_name).model
    # buffers the architecture recomputes (open_clip's attn_mask) are not weights; a trace stores them
    transient = {k for k, _ in model.named_buffers()} - set(model.state_dict())
    state = {k: v for k, v in state.items() if k not in transient}
    try:
        open_clip.model.build_model_from_openai_state_dict(dict(state))
    except (KeyError, RuntimeError, IndexError, AssertionError) as exc:
        raise EftclipError(f"{path}: its tensors are not an OpenAI CLIP state dict ({type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None
    state = adapt_state_dict(model, state)
    check_fits(model, state, source=path, model_name=model_name)
    model.load_state_dict(state, strict=True)
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    meta = {"converted_from": path.name, "converted_from_sha256": digest, "converter": "torchscript-weights-only"}
    return save_checkpoint(model, out, model_name=model_name, meta=meta)
