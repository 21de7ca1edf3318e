"""WaNet (Nguyen and Tran, 2021): an imperceptible, smooth warp of the whole image.

The warp field is a random ``k`` x ``k`` flow (two channels, uniform in
[-1, 1], divided by its mean absolute value), drawn once from
``pattern_seed``, upsampled bicubically to the image size and scaled by the
strength ``s``.  It is added to the identity sampling grid in the
normalised coordinates of :func:`torch.nn.functional.grid_sample` as
``s * flow / size``, so a pixel moves by ``s * flow / 2`` pixels: with
WaNet's defaults (k=4, s=0.5) well under a pixel on average.  The flow is
clipped to ``[-max_flow, max_flow]`` after upsampling (bicubic interpolation
overshoots), which bounds the displacement by :attr:`WaNetTrigger.max_displacement_px`.

Noise mode (WaNet's "cross" samples, which keep their true label in WaNet's
training so that the model learns this particular warp and not warping in
general): ``noise=True`` adds, per image, a further random perturbation
uniform in [-1, 1] / size to the grid, drawn from the per-image rng.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from eftclip.attacks.base import Trigger, TriggerResult, check_image, register_trigger


@register_trigger("wanet")
@dataclass(frozen=True)
class WaNetTrigger(Trigger):
    """Warp the image along a fixed smooth random field; the mask is the pixels that changed."""

    k: int = 4  # side of the random control grid of the flow
    s: float = 0.5  # warp strength
    pattern_seed: int = 0  # seed of the k x k flow (the same warp on every image)
    noise: bool = False  # WaNet noise mode: add a per-image random perturbation of the grid
    max_flow: float = 2.0  # clip of the upsampled unit-mean flow; bounds the displacement
    grid_rescale: float = 1.0  # WaNet's grid rescale (values below 1 shrink the image slightly)

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"k must be at least 2, got {self.k}")
        if not self.s > 0:
            raise ValueError(f"s (warp strength) must be positive, got {self.s}")
        if not self.max_flow > 0:
            raise ValueError(f"max_flow must be positive, got {self.max_flow}")
        if not 0 < self.grid_rescale <= 1:
            raise ValueError(f"grid_rescale must be in (0, 1], got {self.grid_rescale}")

    @property
    def max_displacement_px(self) -> float:
        """Largest shift of any sampling point, in pixels (warp plus noise mode; ignores grid_rescale)."""
        return self.s * self.max_flow / 2 + (0.5 if self.noise else 0.0)

    @functools.cached_property
    def _flow(self) -> torch.Tensor:
        ctrl = np.random.default_rng(self.pattern_seed).uniform(-1.0, 1.0, size=(1, 2, self.k, self.k))
        ctrl = ctrl / np.mean(np.abs(ctrl))
        return torch.from_numpy(ctrl.astype(np.float32))

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a handful of image sizes per dataset
    def grid(self, hw: tuple[int, int]) -> torch.Tensor:
        """The warped sampling grid for an image of ``hw``: (1, H, W, 2) float, (x, y) in [-1, 1]."""
        H, W = hw
        flow = F.interpolate(self._flow, size=(H, W), mode="bicubic", align_corners=True)
        flow = flow.clamp(-self.max_flow, self.max_flow)
        ys = torch.linspace(-1.0, 1.0, H) if H > 1 else torch.zeros(1)
        xs = torch.linspace(-1.0, 1.0, W) if W > 1 else torch.zeros(1)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        # channel 0 moves x, channel 1 moves y, each relative to its own side
        grid_x = gx + self.s * flow[0, 0] / W
        grid_y = gy + self.s * flow[0, 1] / H
        grid = torch.stack((grid_x, grid_y), dim=-1)[None] * self.grid_rescale
        return grid.clamp(-1.0, 1.0)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> TriggerResult:
        image = check_image(image)
        H, W = image.shape[:2]
        grid = self.grid((H, W))
        if self.noise:
            jitter = rng.uniform(-1.0, 1.0, size=(1, H, W, 2)).astype(np.float32)
            jitter[..., 0] /= W
            jitter[..., 1] /= H
            grid = (grid + torch.from_numpy(jitter)).clamp(-1.0, 1.0)
        x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]  # a copy: the input may be read-only
        with torch.no_grad():
            y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
        out = y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        mask = np.any(out != image, axis=2)
        return TriggerResult(image=out, mask=mask)
