"""Pretrained CLIP weights by name, through the Hugging Face hub cache.

open_clip names pretrained weights two ways: a tag of a built-in architecture
(``--model ViT-B-32 --pretrained laion2b_s34b_b79k``), whose
``get_pretrained_cfg`` entry points at a hub repo, and a hub repo holding
``open_clip_config.json`` plus weights (``hf-hub:org/name``).  Both resolve
here to local files in huggingface_hub's cache (downloaded on first use when
the hub can be reached); the weights are then read by eftclip's safe loader
(:mod:`eftclip.models.checkpoints`), never unpickled freely.

The cache folder and the offline switch are read from the environment at call
time (``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``), the way
huggingface_hub reads them at import, so that a process (or a test) that sets
them later is still obeyed.  Offline, or when the hub cannot be reached, a
file missing from the cache is one :class:`~eftclip.errors.EftclipError` that
names the weights and says how to get them; nothing is written.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eftclip.errors import EftclipError

#: the schema open_clip uses for models hosted on the hub
HF_HUB_PREFIX = "hf-hub:"
#: weights file names an open_clip hub repo may hold, preferred first (safetensors first)
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: the architecture file of an open_clip hub repo
OPEN_CLIP_CONFIG = "open_clip_config.json"
# preprocessing entries of a pretrained tag's config that override the architecture's defaults
_PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                    "resize_mode": "image_resize_mode"}
_TRUE = ("1", "on", "yes", "true")


@dataclass(frozen=True)
class PretrainedWeights:
    """Where the weights named by a pretrained tag or hub repo lie on this machine."""

    arch: str  # open_clip architecture to build: a built-in/project name or "hf-hub:org/name"
    weights: Path  # the weights file in the hub cache (safetensors or a weights-only torch file)
    source: str  # what the user wrote: the tag, or "hf-hub:org/name"
    preprocess: dict[str, Any] = field(default_factory=dict)  # create_model_and_transforms image_* overrides


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_hub_name(name: str | None) -> bool:
    """``name`` is an ``hf-hub:org/name`` reference."""
    return bool(name) and str(name).startswith(HF_HUB_PREFIX)


def unavailable(
    what: str, repo_id: str, files: Sequence[str], reason: str, *, local: str = "the weights file itself (--pretrained FILE)"
) -> EftclipError:
    """The one error for weights that are neither cached nor downloadable.

    ``local``: how the user passes the downloaded files instead.
    """
    where = "HF_HUB_OFFLINE is set" if hub_offline() else f"the hub could not be reached or refused ({reason})"
    return EftclipError(
        f"{what}: hub repo {repo_id!r} ({' / '.join(files)}) is not in the local cache "
        f"{hub_cache_dir()} and {where}. To get it: on a machine with network, run "
        f"`hf download {repo_id}`, then copy that cache here and set HF_HOME to the "
        f"folder holding its hub/ folder, or pass {local}"
    )


def hub_file(repo_id: str, files: Sequence[str], *, what: str) -> Path:
    """The first of ``files`` that repo ``repo_id`` has, as a path in the hub cache.

    Downloads it when online and not cached; offline (``hub_offline()``) only
    the cache is looked at.  Raises :func:`unavailable`'s error otherwise.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        from eftclip.errors import MissingExtraError

        raise MissingExtraError(what, "hf", "huggingface_hub") from None
    reason = "not found"
    for name in files:
        try:
            path = hf_hub_download(repo_id, name, cache_dir=os.fspath(hub_cache_dir()),
                                   local_files_only=hub_offline())
            return Path(path)
        except (OSError, ValueError, HfHubHTTPError) as exc:  # missing here; try the next name
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    raise unavailable(what, repo_id, files, reason)


def _repo_and_files(hf_hub: str) -> tuple[str, tuple[str, ...]]:
    # open_clip's pretrained entries write "org/name/" (default file) or "org/name/file.bin"
    if hf_hub.endswith("/"):
        return hf_hub.rstrip("/"), OPEN_CLIP_WEIGHTS
    repo, name = os.path.split(hf_hub)
    if name.endswith((".bin", ".pth", ".pt")):  # prefer a safetensors twin when the repo has one
        return repo, (name.rsplit(".", 1)[0] + ".safetensors", name)
    return repo, (name,)


def _tag_arch(model: str, tag: str, tag_cfg: dict) -> str:
    """The architecture to build for a tag: its QuickGELU variant when the tag was trained with it."""
    import open_clip

    if not tag_cfg.get("quick_gelu") or (open_clip.get_model_config(model) or {}).get("quick_gelu"):
        return model
    variant = f"{model}-quickgelu"
    if variant not in open_clip.list_models():
        raise EftclipError(f"--pretrained {tag}: trained with QuickGELU, and {model!r} has no "
                           f"'-quickgelu' variant to build")
    return variant


def resolve_pretrained(model: str | None, pretrained: str) -> PretrainedWeights:
    """Find (or download) the weights of a tag or ``hf-hub:`` name.

    Args:
        model: the architecture (``"ViT-B-32"``); None with an ``hf-hub:`` name
            means "the repo's own architecture".
        pretrained: an open_clip tag of ``model`` (``"openai"``,
            ``"laion2b_s34b_b79k"``) or ``"hf-hub:org/name"``.

    Returns:
        :class:`PretrainedWeights`; a tag trained with QuickGELU builds the
        ``-quickgelu`` variant (open_clip would only warn about the mismatch).
    """
    import open_clip

    if is_hub_name(pretrained):
        repo = pretrained[len(HF_HUB_PREFIX):].strip("/")
        weights = hub_file(repo, OPEN_CLIP_WEIGHTS, what=f"--pretrained {pretrained}")
        return PretrainedWeights(arch=model or pretrained, weights=weights, source=pretrained)
    if model is None:
        raise EftclipError(f"--pretrained {pretrained}: a tag needs the architecture too (--model NAME)")
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise EftclipError(
            f"--pretrained {pretrained!r}: not a file, and not an open_clip tag of {model!r} "
            f"(its tags: {', '.join(tags) if tags else 'none'}; see open_clip.list_pretrained())"
        )
    if not cfg.get("hf_hub"):
        raise EftclipError(f"--pretrained {pretrained!r} of {model!r}: open_clip names no hub repo for it; "
                           f"download the weights yourself and pass the file (--pretrained FILE)")
    repo, files = _repo_and_files(cfg["hf_hub"])
    weights = hub_file(repo, files, what=f"--model {model} --pretrained {pretrained}")
    preprocess = {dst: cfg[src] for src, dst in _PREPROCESS_KEYS.items() if cfg.get(src) is not None}
    return PretrainedWeights(arch=_tag_arch(model, pretrained, cfg), weights=weights,
                             source=pretrained, preprocess=preprocess)


def hub_config_dir(name: str) -> Path:
    """The cached snapshot folder holding ``open_clip_config.json`` of ``hf-hub:org/name``.

    Remembered per (name, cache, offline) for the process: checkpoint saves ask for
    the config every epoch, and online each lookup would be a request to the hub.
    """
    return _config_dir(name, os.fspath(hub_cache_dir()), hub_offline())


@functools.lru_cache(maxsize=32)
def _config_dir(name: str, _cache: str, _offline: bool) -> Path:
    repo = name[len(HF_HUB_PREFIX):].strip("/")
    return hub_file(repo, (OPEN_CLIP_CONFIG,), what=f"model {name}").parent
