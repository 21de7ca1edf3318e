"""Oracle weights with random values, made here, for throughput benchmarks (nothing is downloaded).

Speed depends on the architecture and the input size, not on the values of the
weights, so the benchmarks build the released architectures with random
weights and save them the way the oracles load real ones:

* :func:`fastsam_weights`: a YOLOv8-seg network with one class saved as an
  ultralytics ``.pt`` (FastSAM's format). ``"s"`` is FastSAM-s's size
  (YOLOv8s-seg: depth 0.33, width 0.50); ``"tiny"`` a sixteenth of the width
  (~250k parameters) for CPU dry runs.
* :func:`owlv2_folder`: an ``Owlv2ForObjectDetection`` + ``Owlv2Processor``
  ``save_pretrained`` folder. ``"base"`` is transformers' default
  ``Owlv2Config`` (ViT-B/16 vision and text towers); ``"tiny"`` two layers of
  width 32. The tokenizer is a CLIP BPE tokenizer over the benchmark's words
  (whole words as merges), so no vocabulary file is needed; the text tower's
  cost does not depend on the vocabulary's size.

Random detections are not real ones: the number of boxes or masks a random
network proposes differs from a trained one's, so the benchmarks print the
finds per image beside images/s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

# FastSAM-s is YOLOv8s-seg (depth, width, max channels of ultralytics' "s" scale) with one class
FASTSAM_SCALES = {"s": [0.33, 0.50, 1024], "tiny": [0.33, 0.0625, 256]}


def fastsam_weights(folder: Path, size: str = "s", seed: int = 0, imgsz: int = 640) -> Path:
    """Save a random FastSAM-style checkpoint of ``size`` ("s" or "tiny") in ``folder``; returns its path."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import SegmentationModel, yaml_model_load

    cfg = dict(yaml_model_load("yolov8n-seg.yaml"))  # ships inside ultralytics
    cfg["scales"] = {size: FASTSAM_SCALES[size]}
    cfg["scale"], cfg["nc"] = size, 1  # FastSAM segments one class, "object"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SegmentationModel(cfg, ch=3, nc=1, verbose=False)
    model.task, model.args = "segment", {"task": "segment", "imgsz": imgsz}
    holder = YOLO("yolov8n-seg.yaml", task="segment")
    holder.model = model
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"FastSAM-{size}-random.pt"
    holder.save(str(path))
    return path


def clip_bpe_tokenizer(words: Sequence[str], max_length: int = 16):
    """A CLIP tokenizer over ``words`` (each word one token, via merges of its letters), built offline."""
    import transformers as tf

    words = sorted({w for phrase in words for w in phrase.lower().split()})
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for ch in sorted(set("".join(words))):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1]] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = tf.CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = max_length
    return tok, vocab


def owlv2_folder(folder: Path, words: Sequence[str], size: str = "base", image_size: int = 768, seed: int = 0) -> Path:
    """Save a random OWLv2 of ``size`` ("base" or "tiny") taking ``image_size`` px images into ``folder``."""
    import torch
    import transformers as tf

    tok, vocab = clip_bpe_tokenizer(words)
    text = dict(vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    if size == "base":
        cfg = tf.Owlv2Config(text_config=text, vision_config=dict(image_size=image_size, patch_size=16))
    elif size == "tiny":
        small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
        cfg = tf.Owlv2Config(text_config={**text, **small},
                             vision_config=dict(image_size=image_size, patch_size=16, **small), projection_dim=32)
    else:
        raise ValueError(f"OWLv2 size must be 'base' or 'tiny', not {size!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.Owlv2ForObjectDetection(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor = tf.Owlv2ImageProcessor(size={"height": image_size, "width": image_size})
    tf.Owlv2Processor(image_processor=processor, tokenizer=tok).save_pretrained(folder)
    return folder
