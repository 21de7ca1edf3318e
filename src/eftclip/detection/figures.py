"""Figures of the detection stage (matplotlib, Agg backend; written atomically).

- :func:`figure7` -- the paper's Figure 7: per flagged image, the picture with
  the poisoned CLIP's list ``L_i`` beside the picture with the oracle's boxes
  and its list ``S_i``.
- :func:`sweep_figures` -- Figures 3 and 4: detection rate against patch size
  rho and position mu, confidence theta and list length tau.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _wrap(labels: Sequence[str], width: int = 28) -> str:
    lines, line = [], ""
    for lab in labels:
        piece = f"'{lab}'"
        if line and len(line) + len(piece) + 2 > width:
            lines.append(line + ",")
            line = piece
        else:
            line = f"{line}, {piece}" if line else piece
    lines.append(line)
    return "\n".join(lines)


def figure7(entries: Sequence[dict], path: str | os.PathLike, *, loader: Callable[[str], object]) -> Path:
    """Draw the Figure 7 panel to ``path`` (PNG).

    ``entries``: dicts with ``image`` (a reference ``loader`` opens to a PIL
    RGB image), ``L`` (CLIP's ranked labels) and ``S`` (the oracle's kept
    finds: ``label``, ``score``, ``box`` XYXY pixels).  Images that fail to
    open are drawn as an empty panel with the reason.
    """
    from eftclip.io import atomic_path

    plt = _plt()
    n = max(1, len(entries))
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 3.1 * n), squeeze=False)
    for row, e in enumerate(entries):
        try:
            img = np.asarray(loader(e["image"]))
        except Exception as exc:  # a vanished file should not cost the whole figure
            img, err = None, f"{type(exc).__name__}"
        else:
            err = None
        left, right = axes[row]
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, f"cannot open image\n({err})", ha="center", va="center", transform=ax.transAxes)
        left.set_xlabel(_wrap(e["L"]), fontsize=8)
        found = e["S"]
        for f in found:
            x1, y1, x2, y2 = f["box"]
            right.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="yellow",
                                          linewidth=1.5))
            right.text(x1, y1, f"{f['label']} {f['score']:.2f}", color="black", fontsize=6,
                       bbox={"facecolor": "yellow", "alpha": 0.7, "pad": 0.5, "edgecolor": "none"})
        right.set_xlabel(_wrap(list(dict.fromkeys(f["label"] for f in found))) or "(nothing found)", fontsize=8)
        if row == 0:
            left.set_title("poisoned CLIP: $\\mathcal{L}_i$", fontsize=9)
            right.set_title("oracle: $\\mathcal{S}_i$ and regions", fontsize=9)
    if not entries:
        axes[0][0].text(0.5, 0.5, "no image was flagged", ha="center", va="center")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def sweep_figures(rows: Sequence[dict], out_dir: str | os.PathLike, *, theta_ref: float = 0.66,
                  tau_ref: int | None = None) -> list[Path]:
    """Figures 3 (a, b) and 4 (a, b) of the paper from sweep rows.

    Each row: ``rho``, ``mu``, ``theta``, ``tau``, ``detection_rate`` (and
    more).  Writes ``figure3.png`` and ``figure4.png`` into ``out_dir``.
    """
    from eftclip.io import atomic_path

    plt = _plt()
    out_dir = Path(out_dir)
    rows = [r for r in rows if r.get("detection_rate") is not None]
    if not rows:
        return []
    rhos = sorted({r["rho"] for r in rows})
    mus = list(dict.fromkeys(r["mu"] for r in rows))
    thetas = sorted({r["theta"] for r in rows})
    taus = sorted({r["tau"] for r in rows})
    tau_ref = tau_ref if tau_ref in taus else taus[0]
    theta_ref = min(thetas, key=lambda t: abs(t - theta_ref))

    def rate(**kw):
        hit = [r["detection_rate"] for r in rows if all(r[k] == v for k, v in kw.items())]
        return float(np.mean(hit)) if hit else np.nan

    paths = []
    # Figure 3: (a) bars over rho x mu at theta_ref; (b) rate against theta per mu (rho averaged)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(rhos))
    x = np.arange(len(mus))
    for k, rho in enumerate(rhos):
        a.bar(x + k * width, [rate(rho=rho, mu=mu, theta=theta_ref, tau=tau_ref) for mu in mus], width,
              label=f"rho={rho}")
    a.set_xticks(x + width * (len(rhos) - 1) / 2)
    a.set_xticklabels(mus)
    a.set_ylim(0, 1.05)
    a.set_ylabel("detection rate")
    a.set_title(f"(a) patch size and position, theta={theta_ref}, tau={tau_ref}", fontsize=9)
    a.legend(fontsize=8)
    for mu in mus:
        b.plot(thetas, [rate(mu=mu, theta=t, tau=tau_ref) for t in thetas], marker="o", label=mu)
    b.set_xlabel("confidence theta")
    b.set_ylim(0, 1.05)
    b.set_title(f"(b) confidence score, tau={tau_ref}", fontsize=9)
    b.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_dir / "figure3.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    paths.append(out_dir / "figure3.png")
    # Figure 4: (a) rate against theta per tau; (b) per (mu, tau)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for tau in taus:
        a.plot(thetas, [rate(theta=t, tau=tau) for t in thetas], marker="o", label=f"tau={tau}")
    a.set_xlabel("confidence theta")
    a.set_ylabel("detection rate")
    a.set_ylim(0, 1.05)
    a.set_title("(a) list length tau", fontsize=9)
    a.legend(fontsize=8)
    for mu in mus:
        for tau in taus:
            b.plot(thetas, [rate(mu=mu, theta=t, tau=tau) for t in thetas], marker="o", label=f"{mu}, tau={tau}")
    b.set_xlabel("confidence theta")
    b.set_ylim(0, 1.05)
    b.set_title("(b) position mu and list length tau", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_dir / "figure4.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    paths.append(out_dir / "figure4.png")
    return paths
