"""Backdoor triggers and dataset poisoning.

Triggers (one module each, registered by name in :data:`TRIGGERS`):
``badnet``, ``blended``, ``wanet``, ``trojannet``, ``trojannn``.  Build one
with :func:`create_trigger` and apply it with ``trigger.apply(image, rng)``;
poison a caption dataset with :func:`eftclip.attacks.poison.poison_dataset`.
"""

from eftclip.attacks.base import (
    TRIGGERS,
    PatchTrigger,
    Trigger,
    TriggerResult,
    create_trigger,
    register_trigger,
)

# importing the modules registers their triggers
from eftclip.attacks.badnet import BadNetTrigger  # noqa: E402
from eftclip.attacks.blended import BlendedTrigger  # noqa: E402
from eftclip.attacks.trojannet import TrojanNetTrigger  # noqa: E402
from eftclip.attacks.trojannn import TrojanNNTrigger  # noqa: E402
from eftclip.attacks.wanet import WaNetTrigger  # noqa: E402

__all__ = [
    "TRIGGERS",
    "BadNetTrigger",
    "BlendedTrigger",
    "PatchTrigger",
    "TrojanNNTrigger",
    "TrojanNetTrigger",
    "Trigger",
    "TriggerResult",
    "WaNetTrigger",
    "create_trigger",
    "register_trigger",
]
