"""Evaluation: zero-shot clean accuracy (CA), attack success rate (ASR), metrics."""

from eftclip.evaluation.metrics import attack_success_rate, per_class_rates, topk_accuracy, topk_hits
from eftclip.evaluation.zeroshot import evaluate, image_features, resolve_target, text_classifier

__all__ = [
    "attack_success_rate",
    "evaluate",
    "image_features",
    "per_class_rates",
    "resolve_target",
    "text_classifier",
    "topk_accuracy",
    "topk_hits",
]
