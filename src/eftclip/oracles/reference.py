"""The reference oracle: class-agnostic regions named by a clean labeller.

Regions come from the image alone (scikit-image segmentation, connected
components of a foreground/background split, or a fixed grid); each region's
crop is named by a labeller that never saw poisoned data (a clean open_clip
model or a clean fixed-vocabulary classifier, see :mod:`eftclip.oracles.labellers`).
It never reads ground truth: only the pixels and the labeller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from eftclip.errors import EftclipError
from eftclip.oracles.base import BaseOracle, Box, Found, OracleResult, extract_crops, mask_to_box, nms
from eftclip.oracles.labellers import DEFAULT_TEMPLATES, CropScorer, clip_labeller_from


@dataclass(frozen=True)
class Region:
    """A class-agnostic region of one image."""

    box_xyxy: Box  # XYXY pixels
    mask: np.ndarray | None  # HW bool over the whole image, or None for box-only regions


def felzenszwalb_regions(image: np.ndarray, *, scale: float = 100.0, sigma: float = 0.8, min_size: int = 20) -> list[Region]:
    """Graph-based segments (skimage ``felzenszwalb``) of a HWC uint8 image."""
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    return _label_regions(labels)


def slic_regions(image: np.ndarray, *, n_segments: int = 32, compactness: float = 10.0) -> list[Region]:
    """SLIC superpixels (skimage ``slic``) of a HWC uint8 image."""
    from skimage.segmentation import slic

    labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
    return _label_regions(labels)


def foreground_regions(image: np.ndarray, *, threshold: float = 30.0, border: int = 2) -> list[Region]:
    """Connected components of pixels that differ from the background colour.

    The background colour is the median of a ``border``-pixel frame; a pixel is
    foreground when a channel differs by more than ``threshold`` (0-255).
    """
    from skimage.measure import label

    h, w = image.shape[:2]
    b = max(1, min(border, h // 2, w // 2))
    frame = np.concatenate(
        [image[:b].reshape(-1, 3), image[-b:].reshape(-1, 3), image[:, :b].reshape(-1, 3), image[:, -b:].reshape(-1, 3)]
    )
    bg = np.median(frame, axis=0)
    fg = (np.abs(image.astype(np.int16) - bg[None, None, :]).max(axis=2)) > threshold
    labels = label(fg, connectivity=2, background=0)
    return _label_regions(labels, skip=0)


def flat_regions(image: np.ndarray, *, tolerance: int = 2, min_pixels: int = 12) -> list[Region]:
    """Connected areas of flat colour, for scenes whose objects are painted in flat
    colours on noisy or textured backgrounds (the built-in world, graphics).

    Two 4-neighbours join when no channel differs by more than ``tolerance``
    (0-255); components of at least ``min_pixels`` pixels become regions.  Noisy
    background shatters into specks that the size floor removes.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h, w = image.shape[:2]
    x = image.astype(np.int16)
    idx = np.arange(h * w).reshape(h, w)
    right = (np.abs(x[:, 1:] - x[:, :-1]).max(axis=2) <= tolerance)
    down = (np.abs(x[1:] - x[:-1]).max(axis=2) <= tolerance)
    rows = np.concatenate([idx[:, :-1][right], idx[:-1][down]])
    cols = np.concatenate([idx[:, 1:][right], idx[1:][down]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(h * w, h * w))
    _, labels = connected_components(graph, directed=False)
    labels = labels.reshape(h, w)
    counts = np.bincount(labels.ravel())
    out = []
    for value in np.nonzero(counts >= min_pixels)[0]:
        mask = labels == value
        out.append(Region(mask_to_box(mask), mask))
    return out


def grid_regions(image: np.ndarray, *, sizes: Sequence[int] = (1, 2, 3)) -> list[Region]:
    """Boxes of ``n x n`` grids for each ``n`` in ``sizes`` (no masks)."""
    h, w = image.shape[:2]
    out = []
    for n in sizes:
        xs = np.linspace(0, w, n + 1)
        ys = np.linspace(0, h, n + 1)
        for i in range(n):
            for j in range(n):
                out.append(Region((float(xs[j]), float(ys[i]), float(xs[j + 1]), float(ys[i + 1])), None))
    return out


def _label_regions(labels: np.ndarray, skip: int | None = None) -> list[Region]:
    out = []
    for value in np.unique(labels):
        if skip is not None and value == skip:
            continue
        mask = labels == value
        box = mask_to_box(mask)
        if box is not None:
            out.append(Region(box, mask))
    return out


def _as_region(r: Any) -> Region:
    # regioners may return Region objects or (box XYXY, mask | None) pairs
    if isinstance(r, Region):
        return r
    box, mask = r
    return Region(tuple(float(v) for v in box), None if mask is None else np.asarray(mask, dtype=bool))


REGIONERS = {
    "felzenszwalb": felzenszwalb_regions,
    "slic": slic_regions,
    "foreground": foreground_regions,
    "flat": flat_regions,
    "grid": grid_regions,
}


def regioner(name: str) -> Callable[..., list[Region]]:
    """The region method ``name``: one of :data:`REGIONERS`, else an ``eftclip.regioners`` plugin.

    A plugin may return Region objects or ``(box XYXY pixels, mask HW bool | None)``
    pairs; both come back as Regions.  The built-in world registers ``world``
    (its flat-region proposals).
    """
    if name in REGIONERS:
        return REGIONERS[name]
    from eftclip.plugins import REGIONERS as GROUP, load_plugin

    propose = load_plugin(GROUP, name, what="region method", builtin=tuple(REGIONERS))
    return lambda image, **kwargs: [_as_region(r) for r in propose(image, **kwargs)]


class ReferenceOracle(BaseOracle):
    """Regions from the pixels, names from a clean labeller.

    Labeller (exactly one): ``labeller`` (a ClipCropLabeller, or any callable with
    ``.classnames`` mapping ``list[HWC uint8]`` to probabilities ``(N, C)``),
    ``labeller_bundle`` (a clean :class:`eftclip.models.ClipBundle`),
    ``labeller_checkpoint`` (a clean open_clip checkpoint; ``labeller_model`` names
    its architecture when no side file records it), or ``region_classifier``
    (a file read by the ``region_classifier`` labeller plugin, :mod:`eftclip.plugins`;
    the built-in world registers its region classifier under that name).
    ``vocabulary``/``templates``: for CLIP labellers, the names scored alongside
    the prompts and the caption templates.
    ``regions``: a key of :data:`REGIONERS` or a regioner plugin, several joined by ``+`` (regions
    pooled, e.g. ``"flat+felzenszwalb"``: exact on flat-painted objects, robust
    under blending triggers), or a callable ``(image HWC uint8, **region_kwargs)
    -> list[Region]``; ``region_kwargs`` go to it (keyed by method when combined).
    ``min_area``/``max_area``: kept regions' box area as a fraction of the image.
    ``max_regions``: the largest regions kept per image.
    ``crop``: ``"box"`` (the region's bounding box, as the paper crops) or
    ``"masked"`` (pixels outside the mask set to ``fill``); ``pad``: box growth.
    ``include_image``: also score the whole image as one region.
    ``nms_iou``: per-prompt suppression of near-duplicate regions.
    ``min_score``: findings below it are dropped (theta is the caller's).
    """

    name = "reference"

    def __init__(
        self,
        *,
        labeller: Any = None,
        labeller_bundle: Any = None,
        labeller_checkpoint: str | None = None,
        labeller_model: str | None = None,
        region_classifier: str | None = None,
        vocabulary: Sequence[str] = (),
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        regions: str | Callable[..., list[Region]] = "felzenszwalb",
        region_kwargs: dict | None = None,
        min_area: float = 0.002,
        max_area: float = 0.95,
        max_regions: int = 48,
        crop: str = "box",
        pad: float = 0.0,
        fill: int = 0,
        include_image: bool = False,
        nms_iou: float = 0.7,
        min_score: float = 0.05,
        wordnet: bool | str = "auto",
        device: str = "cpu",
    ):
        super().__init__(min_score=min_score)
        given = [x is not None for x in (labeller, labeller_bundle, labeller_checkpoint, region_classifier)]
        if sum(given) != 1:
            raise EftclipError(
                "the reference oracle needs exactly one labeller: labeller=, labeller_bundle=, "
                "labeller_checkpoint= or region_classifier="
            )
        names = [] if callable(regions) else [n.strip() for n in str(regions).split("+")]
        methods = {n: regioner(n) for n in names}
        if crop not in ("box", "masked"):
            raise EftclipError(f"crop must be 'box' or 'masked', not {crop!r}")
        if region_classifier is not None:
            from pathlib import Path

            if not Path(region_classifier).exists():
                raise EftclipError(f"{region_classifier}: region classifier not found")
            from eftclip.plugins import LABELLERS, load_plugin

            labeller = load_plugin(LABELLERS, "region_classifier", what="labeller")(region_classifier)
        elif labeller is None:
            labeller = clip_labeller_from(
                bundle=labeller_bundle, model=labeller_model, checkpoint=labeller_checkpoint,
                vocabulary=vocabulary, templates=templates, device=device,
            )
        self.scorer = CropScorer(labeller, wordnet=wordnet)
        region_kwargs = dict(region_kwargs or {})
        if callable(regions) or len(names) == 1:
            self.regioner = regions if callable(regions) else methods[names[0]]
            self.region_kwargs = region_kwargs
        else:
            # several methods joined by "+": their regions are pooled; per-method
            # keyword arguments sit under the method's name in region_kwargs
            unknown_keys = set(region_kwargs) - set(names)
            if unknown_keys:
                raise EftclipError(
                    f"with combined regions {regions!r}, region_kwargs must be keyed by method name, "
                    f"not {sorted(unknown_keys)}"
                )
            parts = [(methods[n], dict(region_kwargs.get(n, {}))) for n in names]
            self.regioner = lambda image: [r for fn, kw in parts for r in fn(image, **kw)]
            self.region_kwargs = {}
        self.min_area, self.max_area = float(min_area), float(max_area)
        self.max_regions = int(max_regions)
        self.crop, self.pad, self.fill = crop, float(pad), int(fill)
        self.include_image = bool(include_image)
        self.nms_iou = float(nms_iou)

    def regions(self, image: np.ndarray) -> list[Region]:
        """The class-agnostic regions scored for ``image`` (HWC uint8), largest first."""
        h, w = image.shape[:2]
        area = float(h * w)
        found = []
        for r in map(_as_region, self.regioner(image, **self.region_kwargs)):
            x1, y1, x2, y2 = r.box_xyxy
            frac = (x2 - x1) * (y2 - y1) / area
            if self.min_area <= frac <= self.max_area:
                found.append((frac, r))
        found.sort(key=lambda t: -t[0])
        out = [r for _, r in found[: self.max_regions]]
        if self.include_image:
            out.insert(0, Region((0.0, 0.0, float(w), float(h)), None))
        return out

    def _find_batch(self, images: list[np.ndarray], prompts_per_image: list[list[str]]) -> list[OracleResult]:
        regions, crops, scorable, unknown = [], [], [], []
        for im, prompts in zip(images, prompts_per_image):
            regs = self.regions(im)
            masks = [r.mask for r in regs] if self.crop == "masked" else None
            regions.append(regs)
            crops.append(extract_crops(im, [r.box_xyxy for r in regs], masks=masks, pad=self.pad, fill=self.fill))
            ok, unk = self.scorer.split_prompts(prompts)
            scorable.append(ok)
            unknown.append(unk)
        # one labeller pass over the crops of the whole batch
        scores = self.scorer.scores_batch(crops, scorable)
        results = []
        for regs, ok, unk, sc in zip(regions, scorable, unknown, scores):
            found = []
            for j, prompt in enumerate(ok):
                col = sc[:, j]
                idx = np.nonzero(col >= self.min_score)[0]
                if idx.size == 0:
                    continue
                boxes = np.array([regs[i].box_xyxy for i in idx])
                for k in idx[nms(boxes, col[idx], self.nms_iou)]:
                    found.append(Found(prompt, float(col[k]), regs[k].box_xyxy, regs[k].mask))
            results.append(OracleResult(found=found, unknown=unk))
        return results
