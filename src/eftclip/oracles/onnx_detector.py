"""A closed-vocabulary object detector in ONNX, run with onnxruntime, as an oracle.

The detector knows a fixed list of class names (a file, one name a line, in
the detector's output order); prompts are mapped onto them by
:class:`~eftclip.oracles.vocabulary.VocabularyMapper` and prompts that map to
nothing are reported as unknown.  Output decoding is selected by name from
:data:`DECODERS` (``fastestdet`` now), so other single-output detectors can be
added as one function each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from eftclip.errors import EftclipError
from eftclip.oracles.base import BaseOracle, Found, OracleResult, clip_box, nms
from eftclip.oracles.vocabulary import VocabularyMapper


@dataclass(frozen=True)
class Detections:
    """Raw detections of one image before prompt mapping."""

    boxes: np.ndarray  # (N, 4) float XYXY pixels in the original image
    scores: np.ndarray  # (N,) float in [0, 1]
    class_ids: np.ndarray  # (N,) int, index into the class-name file


@dataclass(frozen=True)
class Decoder:
    """How to feed one detector family and read its output."""

    preprocess: Callable[[np.ndarray, tuple[int, int]], np.ndarray]  # (HWC uint8 RGB, (h, w)) -> NCHW float32
    decode: Callable[[list[np.ndarray], int, int, float, float], Detections]  # (outputs, W, H, min_score, iou)


def _resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    pil = Image.fromarray(image)
    # area averaging when shrinking (what cv2.INTER_AREA does), bilinear when growing
    shrink = w <= image.shape[1] and h <= image.shape[0]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(pil.resize((w, h), resample))


def _fastestdet_preprocess(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    # FastestDet was trained on OpenCV-read images: BGR, scaled to [0, 1]
    x = _resize(image, size_hw)[:, :, ::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _fastestdet_decode(outputs: list[np.ndarray], width: int, height: int, min_score: float, iou: float) -> Detections:
    """FastestDet's single 1x(5+C)xHxW map: objectness (sigmoid applied), x/y offsets
    (tanh), w/h relative to the image (sigmoid), C class probabilities (softmax applied);
    score = obj^0.6 * cls^0.4 for the best class of each cell, then per-class NMS."""
    out = np.asarray(outputs[0], dtype=np.float64)
    if out.ndim != 4 or out.shape[0] != 1 or out.shape[1] < 6:
        raise EftclipError(f"fastestdet decoder: expected a 1x(5+C)xHxW output, got {out.shape}")
    out = out[0]
    gh, gw = out.shape[1:]
    obj = np.clip(out[0], 0.0, 1.0)
    cls = np.clip(out[5:], 0.0, 1.0)
    cls_id = cls.argmax(axis=0)
    cls_p = cls.max(axis=0)
    score = obj**0.6 * cls_p**0.4
    ys, xs = np.nonzero(score >= min_score)
    if len(xs) == 0:
        return Detections(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), dtype=np.int64))
    cx = (xs + np.tanh(out[1, ys, xs])) / gw
    cy = (ys + np.tanh(out[2, ys, xs])) / gh
    bw = _sigmoid(out[3, ys, xs])
    bh = _sigmoid(out[4, ys, xs])
    boxes = np.stack([(cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height], 1)
    scores = score[ys, xs]
    ids = cls_id[ys, xs].astype(np.int64)
    keep = []
    for c in np.unique(ids):
        idx = np.nonzero(ids == c)[0]
        keep.extend(idx[nms(boxes[idx], scores[idx], iou)].tolist())
    keep = np.asarray(sorted(keep, key=lambda i: -scores[i]), dtype=np.int64)
    return Detections(boxes[keep], scores[keep], ids[keep])


DECODERS: dict[str, Decoder] = {
    "fastestdet": Decoder(_fastestdet_preprocess, _fastestdet_decode),
}


def read_classnames(path: str | os.PathLike) -> list[str]:
    """Class names, one a line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise EftclipError(f"{path}: class-name file not found")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise EftclipError(f"{path}: class-name file holds no names")
    return names


class OnnxDetectorOracle(BaseOracle):
    """Closed-vocabulary ONNX detector (e.g. the COCO-80 FastestDet) as an oracle.

    ``model_path``: the ``.onnx`` file.  ``classnames_path``: one class name a line,
    in output order (default: ``coco.names`` beside the model).  ``decoder``: a key
    of :data:`DECODERS`.  ``min_score``: detections below it are not decoded at all
    (a pre-filter; theta is the caller's).  ``nms_iou``: per-class NMS threshold.
    ``wordnet``/``synonyms``: passed to :class:`VocabularyMapper`.  ``threads``:
    onnxruntime intra-op threads (None: its default).  ``providers``: onnxruntime
    execution providers in order of preference (e.g. ``CUDAExecutionProvider`` first).

    A finding's score is the detector's score for its class; each prompt mapped
    onto that class gets its own :class:`Found` with ``mask=None``.
    """

    name = "onnx-detector"

    def __init__(
        self,
        model_path: str | os.PathLike,
        classnames_path: str | os.PathLike | None = None,
        *,
        decoder: str = "fastestdet",
        min_score: float = 0.05,
        nms_iou: float = 0.45,
        wordnet: bool | str = "auto",
        synonyms: Sequence[Sequence[str]] | None = None,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ):
        super().__init__(min_score=min_score)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise EftclipError(f"{model_path}: ONNX model file not found")
        if decoder not in DECODERS:
            raise EftclipError(f"unknown detector decoder {decoder!r}; known: {', '.join(sorted(DECODERS))}")
        classnames_path = Path(classnames_path) if classnames_path else model_path.parent / "coco.names"
        self.classnames = read_classnames(classnames_path)
        self.decoder = DECODERS[decoder]
        self.nms_iou = float(nms_iou)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise EftclipError(f"{model_path}: onnxruntime cannot load this model ({exc})") from exc
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            raise EftclipError(f"{model_path}: expected a fixed NCHW input, got {shape}")
        self.input_hw = (int(shape[2]), int(shape[3]))
        # a fixed batch of 1 (as FastestDet's export) runs image by image
        self._batchable = not isinstance(shape[0], int) or shape[0] != 1
        self.mapper = VocabularyMapper(self.classnames, wordnet=wordnet, synonyms=synonyms)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Raw detections (all classes, score >= min_score) for HWC uint8 RGB images."""
        xs = [self.decoder.preprocess(im, self.input_hw) for im in images]
        outs: list[list[np.ndarray]] = []
        if self._batchable and len(xs) > 1:
            batch = self.session.run(None, {self._input_name: np.concatenate(xs)})
            outs = [[o[i : i + 1] for o in batch] for i in range(len(xs))]
        else:
            outs = [self.session.run(None, {self._input_name: x}) for x in xs]
        dets = []
        for im, out in zip(images, outs):
            h, w = im.shape[:2]
            dets.append(self.decoder.decode(out, w, h, self.min_score, self.nms_iou))
        if any(d.class_ids.size and d.class_ids.max() >= len(self.classnames) for d in dets):
            raise EftclipError(f"the detector outputs more classes than the {len(self.classnames)} class names given")
        return dets

    def _find_batch(self, images: list[np.ndarray], prompts_per_image: list[list[str]]) -> list[OracleResult]:
        results = []
        for im, prompts, det in zip(images, prompts_per_image, self.detect(images)):
            mapped, unknown = self.mapper.map_all(prompts)
            by_class: dict[str, list[str]] = {}
            for p, c in mapped.items():
                by_class.setdefault(c, []).append(p)
            h, w = im.shape[:2]
            found = []
            for box, score, cid in zip(det.boxes, det.scores, det.class_ids):
                for p in by_class.get(self.classnames[int(cid)], ()):
                    found.append(Found(p, float(min(max(score, 0.0), 1.0)), clip_box(box, w, h), None))
            results.append(OracleResult(found=found, unknown=unknown))
        return results
