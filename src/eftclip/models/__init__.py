"""CLIP models through open_clip, and safe checkpoint I/O.

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

register_configs(CONFIG_DIR)

__all__ = [
    "CONFIG_DIR",
    "ClipBundle",
    "create_model",
    "list_models",
    "load_checkpoint",
    "model_config",
    "read_state_dict",
    "register_configs",
    "save_checkpoint",
]
