"""CLIP models through open_clip, safe checkpoint I/O, and pretrained weights by name.

Importing this package registers the project's tiny architectures
(``eftclip-tiny-vit``, ``eftclip-tiny-rn``, and any other JSON under
``configs/``) with open_clip.
"""

from eftclip.models.checkpoints import (
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)
from eftclip.models.factory import (
    CONFIG_DIR,
    ClipBundle,
    create_model,
    list_models,
    model_config,
    register_configs,
)
from eftclip.models.loading import load_clip, resolve_clip_weights

register_configs(CONFIG_DIR)

__all__ = [
    "CONFIG_DIR",
    "ClipBundle",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_clip",
    "model_config",
    "read_state_dict",
    "register_configs",
    "resolve_clip_weights",
    "save_checkpoint",
]
