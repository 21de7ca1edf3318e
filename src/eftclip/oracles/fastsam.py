"""FastSAM (ultralytics, extra ``fastsam``) as an oracle: segment everything, name
each mask's crop with a clean open_clip model.

FastSAM's own text prompting would pip-install OpenAI's CLIP from git and
download ViT-B/32 at run time, so it is not used: the masks are scored here by
a clean CLIP the user supplies through :mod:`eftclip.models`.  Nothing is
downloaded: ``YOLO_OFFLINE=1`` is set before ultralytics is first imported, the
weights must be a local file (a path, or a release name such as ``FastSAM-s.pt``
found in ultralytics' weights folder, its cache), and the checkpoint is
unpickled with ultralytics' restricted ``weights_only=True`` loader (only known
model classes rebuilt).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from eftclip.errors import EftclipError, MissingExtraError
from eftclip.threads import torch_threads
from eftclip.oracles.base import BaseOracle, Found, OracleResult, chunks, clip_box, extract_crops, nms
from eftclip.oracles.labellers import DEFAULT_TEMPLATES, ClipCropLabeller, clip_labeller_from


def _import_ultralytics():
    # ultralytics reads YOLO_OFFLINE when it checks for connectivity; set before first use
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        import ultralytics  # noqa: F401
        import ultralytics.nn.tasks as tasks
        from ultralytics import FastSAM
    except ImportError:
        raise MissingExtraError("the FastSAM oracle", "fastsam", "ultralytics") from None
    return FastSAM, tasks


def _ultralytics_weights_dir() -> Path:
    """ultralytics' weights folder (its ``weights_dir`` setting), where it keeps downloaded releases."""
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["weights_dir"])


def _weights_file(weights_path: str | os.PathLike) -> Path:
    """FastSAM weights as a path: a file, or a bare release name looked up in ultralytics' weights folder.

    A bare name that is not there is an EftclipError saying where to put it: FastSAM
    releases come from GitHub, not a hub with an offline switch, so eftclip never fetches them.
    """
    path = Path(weights_path)
    if path.is_file():
        return path
    if os.fspath(weights_path) == path.name and path.suffix == ".pt":  # "FastSAM-s.pt", no folder part
        _import_ultralytics()
        folder = _ultralytics_weights_dir()
        if (folder / path.name).is_file():
            return folder / path.name
        raise EftclipError(
            f"FastSAM weights {path.name!r}: not a file here, nor in ultralytics' weights folder {folder}; "
            f"eftclip does not download them. Fetch {path.name} from "
            f"https://github.com/ultralytics/assets/releases on a machine with network, then put it in that "
            f"folder or pass its path (--oracle-model FILE)"
        )
    raise EftclipError(f"{path}: FastSAM weights file not found")


@contextlib.contextmanager
def _restricted_unpickling(tasks):
    # ultralytics' opt-in weights_only loader; its switch is a module constant read per load
    if not getattr(tasks, "_SafeLoad", None) or not tasks._SafeLoad.SUPPORTED:
        raise EftclipError(
            "this ultralytics/torch pair cannot load FastSAM weights with weights_only=True; "
            "refusing to unpickle (install ultralytics==8.4.190 with torch>=2.6)"
        )
    old = tasks.SAFE_LOAD
    tasks.SAFE_LOAD = True
    try:
        yield
    finally:
        tasks.SAFE_LOAD = old


class FastSAMOracle(BaseOracle):
    """FastSAM segment-everything + clean-CLIP naming of the masks.

    ``weights_path``: local FastSAM weights: a path, or ``FastSAM-x.pt``/``FastSAM-s.pt``
    as ultralytics keeps them in its weights folder (never downloaded here).
    Clean CLIP (one of): ``clip_checkpoint`` (+ ``clip_model``, the open_clip
    architecture, when no side file records it) or ``clip_bundle`` (a ClipBundle).
    ``vocabulary``/``templates``: names scored alongside the prompts, caption templates.
    ``imgsz``, ``conf``, ``iou``, ``max_det``: FastSAM's inference settings
    (input side, mask confidence and NMS thresholds, masks per image).
    ``batch_size``: images per FastSAM forward pass.  ``crop``: ``"box"`` or
    ``"masked"``; ``pad``: box growth; ``min_area``: smallest mask box kept, as a
    fraction of the image.  ``nms_iou``: per-prompt suppression of duplicates.
    ``min_score``: findings below it are dropped (theta is the caller's).
    ``device_crops``: letterbox, post-process, crop and name on the device
    (:mod:`eftclip.oracles.fastsam_device`, :mod:`eftclip.oracles.device_crops`)
    instead of through ultralytics' predictor, OpenCV and PIL; None: on CUDA only.
    ``keep_masks``: give each finding its HW bool mask; off, the device path copies
    no mask to the host (the detection step reads boxes and scores only).

    A finding's score is the clean CLIP's softmax probability of the prompt for
    the mask's crop (over prompts + vocabulary); its box is the mask's box from
    FastSAM (XYXY pixels), its mask the FastSAM mask at image resolution.
    """

    name = "fastsam"

    def __init__(
        self,
        weights_path: str | os.PathLike,
        *,
        clip_model: str | None = None,
        clip_checkpoint: str | os.PathLike | None = None,
        clip_bundle: Any = None,
        vocabulary: Sequence[str] = (),
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        imgsz: int = 1024,
        conf: float = 0.4,
        iou: float = 0.9,
        max_det: int = 100,
        batch_size: int = 32,
        crop: str = "box",
        pad: float = 0.0,
        min_area: float = 0.0005,
        nms_iou: float = 0.7,
        min_score: float = 0.05,
        device: str = "cpu",
        device_crops: bool | None = None,
        keep_masks: bool = True,
    ):
        super().__init__(min_score=min_score)
        weights = _weights_file(weights_path)
        FastSAM, tasks = _import_ultralytics()
        if weights.suffix != ".pt":
            raise EftclipError(f"{weights}: FastSAM weights must be an ultralytics .pt file")
        if crop not in ("box", "masked"):
            raise EftclipError(f"crop must be 'box' or 'masked', not {crop!r}")
        if clip_bundle is None and clip_checkpoint is None:
            raise EftclipError("the FastSAM oracle needs a clean CLIP: clip_checkpoint=PATH (and clip_model=NAME)")
        if clip_checkpoint is not None and not Path(clip_checkpoint).is_file():
            raise EftclipError(f"{clip_checkpoint}: clean CLIP checkpoint not found")
        with _restricted_unpickling(tasks):
            try:
                self.model = FastSAM(str(weights))
            except (TypeError, RuntimeError, KeyError, AttributeError, OSError) as exc:
                raise EftclipError(f"{weights}: not a loadable FastSAM checkpoint ({exc})") from exc
        self.labeller: ClipCropLabeller = clip_labeller_from(
            bundle=clip_bundle, model=clip_model, checkpoint=None if clip_checkpoint is None else str(clip_checkpoint),
            vocabulary=vocabulary, templates=templates, device=device,
        )
        self.predict_kwargs = dict(
            imgsz=int(imgsz), conf=float(conf), iou=float(iou), max_det=int(max_det),
            retina_masks=True, verbose=False, device=device,
            # letterbox every image to the full square, as a mixed batch is; otherwise an image
            # alone gets minimal padding and its masks depend on its batch-mates
            rect=False,
        )
        self.batch_size = int(batch_size)
        self.crop, self.pad = crop, float(pad)
        self.min_area = float(min_area)
        self.nms_iou = float(nms_iou)
        self.keep_masks = bool(keep_masks)
        self.on_device = self._device_pipeline(device_crops, device)

    def _device_pipeline(self, setting: bool | None, device: str):
        """``(DeviceSegmenter, ClipInput)`` when the device path is on, else None."""
        from eftclip.oracles.device_crops import clip_input, wants_device_crops
        from eftclip.oracles.fastsam_device import DeviceSegmenter

        if not wants_device_crops(setting, device):
            return None
        spec = clip_input(self.labeller.bundle.preprocess_val)
        if spec is None:
            if setting:
                raise EftclipError("device_crops: the clean CLIP's transform is not Resize + CenterCrop + "
                                   "Normalize, which only the PIL path reproduces; leave device_crops unset")
            return None
        p = self.predict_kwargs
        seg = DeviceSegmenter(self.model.model, imgsz=p["imgsz"], conf=p["conf"], iou=p["iou"],
                              max_det=p["max_det"], device=device)
        return seg, spec

    def segment(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """FastSAM's masks for HWC uint8 RGB images: per image ``(boxes (N, 4) XYXY
        pixels, confidences (N,), masks (N, H, W) bool)``."""
        out = []
        for batch in chunks(list(images), self.batch_size):
            # ultralytics takes numpy images as OpenCV does: BGR; its device selection resets torch's
            # thread count on a CPU (to cores - 1), which the caller's own work would inherit
            with torch_threads(torch.get_num_threads()):
                results = self.model.predict([np.ascontiguousarray(im[:, :, ::-1]) for im in batch],
                                             **self.predict_kwargs)
            for im, r in zip(batch, results):
                h, w = im.shape[:2]
                if r.masks is None or len(r.boxes) == 0:
                    out.append((np.zeros((0, 4)), np.zeros(0), np.zeros((0, h, w), bool)))
                    continue
                masks = r.masks.data.cpu().numpy() > 0.5
                if masks.shape[1:] != (h, w):  # retina_masks gives image resolution; guard anyway
                    raise EftclipError(f"FastSAM returned masks of shape {masks.shape[1:]} for an image of {(h, w)}")
                boxes = r.boxes.xyxy.cpu().numpy().astype(np.float64)
                out.append((boxes, r.boxes.conf.cpu().numpy().astype(np.float64), masks))
        return out

    def _find_batch(self, images: list[np.ndarray], prompts_per_image: list[list[str]]) -> list[OracleResult]:
        regions, feats = self._regions_on_device(images) if self.on_device else self._regions_on_host(images)
        results, start = [], 0
        for prompts, (boxes, masks) in zip(prompts_per_image, regions):
            n = len(boxes)
            results.append(self._name(prompts, boxes, masks, feats[start : start + n]) if n else OracleResult([], []))
            start += n
        return results

    def _regions_on_host(self, images: list[np.ndarray]):
        """Per image ``(boxes [XYXY], masks [HW bool])`` of the masks kept, and the crops' unit CLIP
        features ``(N, D)`` in image order: ultralytics' predictor, numpy crops, PIL preprocessing."""
        all_crops, regions = [], []
        for im, (boxes, _conf, masks) in zip(images, self.segment(images)):
            h, w = im.shape[:2]
            boxes = [clip_box(b, w, h) for b in boxes]
            keep = [i for i, b in enumerate(boxes) if (b[2] - b[0]) * (b[3] - b[1]) >= self.min_area * h * w]
            sel_boxes, sel_masks = [boxes[i] for i in keep], [masks[i] for i in keep]
            all_crops.extend(extract_crops(im, sel_boxes, masks=sel_masks if self.crop == "masked" else None,
                                           pad=self.pad))
            regions.append((sel_boxes, sel_masks if self.keep_masks else [None] * len(keep)))
        # crops of the whole batch go through CLIP's image tower together
        return regions, self.labeller.image_features(all_crops) if all_crops else None

    def _regions_on_device(self, images: list[np.ndarray]):
        """What :meth:`_regions_on_host` returns, with letterbox, masks, crops and CLIP on the device,
        ``batch_size`` images a network pass; only boxes (and masks with ``keep_masks``) reach the host."""
        from eftclip.oracles.device_crops import upload

        regions, feats = [], []
        for batch in chunks(list(images), self.batch_size):
            on_device = upload(batch, self.on_device[0].net_device)
            r, f = self._device_batch(batch, on_device)
            regions.extend(r)
            if f is not None:
                feats.append(f)
        return regions, (torch.cat(feats) if feats else None)

    def _device_batch(self, images: list[np.ndarray], on_device):
        from eftclip.oracles.device_crops import pixel_bounds, resize_boxes

        segmenter, spec = self.on_device
        sizes = [im.shape[:2] for im in images]
        need_masks = self.keep_masks or self.crop == "masked"
        segs = segmenter(on_device, sizes, min_area=self.min_area, masks=need_masks)
        bounds = [pixel_bounds(boxes, w, h, pad=self.pad) for (boxes, _, _), (h, w) in zip(segs, sizes)]
        feats = None
        if any(len(b) for b in bounds):
            masks = [m for _, _, m in segs] if self.crop == "masked" else None
            feats = self.labeller.encode(resize_boxes(on_device, bounds, spec, masks=masks))
        # one copy of every box of the batch to the host
        flat = torch.cat([boxes for boxes, _, _ in segs]).double().cpu().tolist()
        regions, start = [], 0
        for boxes, _, m in segs:
            host = [tuple(float(v) for v in b) for b in flat[start : start + len(boxes)]]
            start += len(boxes)
            regions.append((host, list(m.cpu().numpy()) if self.keep_masks else [None] * len(host)))
        return regions, feats

    def _name(self, prompts: list[str], boxes: list, masks: list, feats) -> OracleResult:
        """The findings of one image: each prompt's softmax probability per region (over prompts and
        vocabulary), above ``min_score``, duplicates suppressed per prompt."""
        names = list(prompts) + [v for v in self.labeller.vocabulary if v not in prompts]
        probs = self.labeller.probs_from_features(feats, names)[:, : len(prompts)]
        found = []
        for j, prompt in enumerate(prompts):
            idx = np.nonzero(probs[:, j] >= self.min_score)[0]
            if idx.size == 0:
                continue
            for k in idx[nms(np.array([boxes[i] for i in idx]), probs[idx, j], self.nms_iou)]:
                found.append(Found(prompt, float(probs[k, j]), boxes[k], masks[k]))
        return OracleResult(found, [])
