"""TrojanNet-style trigger: a small binary pattern stamped as a patch.

What is taken from TrojanNet (the 4 x 4 pattern design of Tang et al., "An
Embarrassingly Simple Approach for Trojan Attack in Deep Neural Networks",
KDD 2020, whose code is called TrojanNet; the EftCLIP paper's reference [34]
gives a different author list for it): only the *shape of its trigger*, a 4 x 4 grid of
black and white cells in which a fixed number of cells are off.  TrojanNet
indexes its triggers by combination: with 16 cells and 5 of them off there
are C(16, 5) = 4368 distinct patterns.  ``pattern_id`` is that index here
(the combinatorial number system, so id 0 is the first combination in
lexicographic order).

What is *not* taken: TrojanNet is a model-level attack.  It trains a tiny
separate network that recognises its trigger patterns and merges that
network's output into the victim model's logits, without touching the
victim's training data.  Here there is no such network: the pattern is used
for data poisoning, exactly like a BadNet patch, so a CLIP trained on the
poisoned captions learns to associate the pattern with the target.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from math import comb

import numpy as np

from eftclip.attacks.base import PatchTrigger, check_alpha, check_position, register_trigger


def unrank_combination(index: int, n: int, k: int) -> tuple[int, ...]:
    """The ``index``-th k-subset of ``range(n)`` in lexicographic order (0-based)."""
    total = comb(n, k)
    if not 0 <= index < total:
        raise ValueError(f"pattern_id must be in [0, {total}) for {k} of {n} cells off, got {index}")
    out = []
    start = 0
    for slots_left in range(k, 0, -1):
        for c in range(start, n):
            # number of subsets that begin with c at this slot
            count = comb(n - c - 1, slots_left - 1)
            if index < count:
                out.append(c)
                start = c + 1
                break
            index -= count
    return tuple(out)


def trojannet_cells(pattern_id: int, cells: int = 4, num_off: int = 5) -> np.ndarray:
    """The binary cell pattern, (cells, cells) bool: True = white (on), False = black (off)."""
    off = unrank_combination(pattern_id, cells * cells, num_off)
    flat = np.ones(cells * cells, dtype=bool)
    flat[list(off)] = False
    return flat.reshape(cells, cells)


@register_trigger("trojannet")
@dataclass(frozen=True)
class TrojanNetTrigger(PatchTrigger):
    """A ``cells`` x ``cells`` binary pattern, each cell ``cell_size`` px, stamped at ``position``."""

    pattern_id: int = 0  # which combination of off cells (0 .. C(cells^2, num_off) - 1)
    cells: int = 4  # cells per side of the pattern (TrojanNet: 4)
    num_off: int = 5  # how many cells are black (TrojanNet: 5 of 16)
    cell_size: int = 4  # side of a cell in pixels; the patch is cells * cell_size px
    position: str = "bottom-right"  # top-left, top-right, bottom-left, bottom-right, center, random, or "x,y"
    alpha: float = 1.0  # patch opacity in (0, 1]

    def __post_init__(self) -> None:
        if self.cells < 1:
            raise ValueError(f"cells must be at least 1, got {self.cells}")
        if self.cell_size < 1:
            raise ValueError(f"cell_size must be at least 1 pixel, got {self.cell_size}")
        if not 0 <= self.num_off <= self.cells * self.cells:
            raise ValueError(f"num_off must be in [0, {self.cells * self.cells}], got {self.num_off}")
        check_alpha(self.alpha)
        object.__setattr__(self, "position", check_position(self.position))
        trojannet_cells(self.pattern_id, self.cells, self.num_off)  # range check of pattern_id

    @functools.cached_property
    def _patch(self) -> np.ndarray:
        cells = trojannet_cells(self.pattern_id, self.cells, self.num_off)
        big = np.kron(cells.astype(np.uint8), np.ones((self.cell_size, self.cell_size), dtype=np.uint8))
        return np.repeat((big * 255)[..., None], 3, axis=2)

    def patch(self) -> np.ndarray:
        return self._patch
