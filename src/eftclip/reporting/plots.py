"""Figures: CA/ASR bars per model, and a matrix's means with their 95% intervals.

matplotlib is imported inside the functions with the Agg backend so that
importing eftclip never needs a display.  Figures are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from eftclip.io import atomic_path


def _save(fig, path: Path) -> None:
    """Write ``fig`` as PNG atomically and free it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def ca_asr_bars(results: Mapping[str, Mapping[str, float | None]], path: str | os.PathLike, *,
                title: str = "Clean accuracy and attack success rate") -> Path:
    """Grouped bars: one group per model name, CA and ASR (fractions in [0, 1]) side by side.

    ``results`` maps a row name ("Poisoned CLIP", "EftCLIP", ...) to a mapping with
    ``ca`` and ``asr``; a missing ASR is drawn as an empty slot.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    ca = [results[n].get("ca") or 0.0 for n in names]
    asr = [results[n].get("asr") or 0.0 for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    bars_ca = ax.bar(x - 0.2, ca, 0.4, label="CA ↑", color="#4C78A8")
    bars_asr = ax.bar(x + 0.2, asr, 0.4, label="ASR ↓", color="#E45756")
    for bars in (bars_ca, bars_asr):
        for b in bars:
            ax.annotate(f"{100 * b.get_height():.0f}%", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=15, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    return path


def matrix_bars(stats: Mapping[str, Mapping[str, Mapping[str, dict]]], path: str | os.PathLike, *,
                title: str = "Mean over seeds, with 95% intervals") -> Path:
    """Two panels (CA, ASR): per attack, one bar per model with its 95% interval as an error bar.

    ``stats`` maps a model name to ``{attack: {"ca": stat, "asr": stat}}`` where each stat
    is ``{"mean", "ci95": [lo, hi] | None}`` (fractions); a missing interval draws no bar end.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(stats)
    attacks = list(dict.fromkeys(a for m in models for a in stats[m]))
    width = 0.8 / max(1, len(models))
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.5 * len(attacks) * 2 + 2), 3.8))
    for ax, metric in zip(axes, ("ca", "asr")):
        for i, model in enumerate(models):
            cells = [stats[model].get(a, {}).get(metric) or {} for a in attacks]
            means = np.array([c.get("mean") if c.get("mean") is not None else np.nan for c in cells], dtype=float)
            err = np.array([[m - c["ci95"][0], c["ci95"][1] - m] if c.get("ci95") else [0.0, 0.0]
                            for m, c in zip(means, cells)]).T
            ax.bar(np.arange(len(attacks)) + (i - (len(models) - 1) / 2) * width, means, width, yerr=err,
                   capsize=2, label=model)
        ax.set_xticks(np.arange(len(attacks)), attacks)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric.upper()} {'↑' if metric == 'ca' else '↓'}")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    return path
