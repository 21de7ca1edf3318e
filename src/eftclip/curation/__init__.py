"""The compact fine-tuning set: a label profile from the affected labels, drawn from a clean pool."""

from eftclip.curation.curate import curate, select
from eftclip.curation.profile import label_weights, quotas, read_affected_labels

__all__ = ["curate", "label_weights", "quotas", "read_affected_labels", "select"]
