"""Detection end to end on a small poisoned set whose truth is known.

Real parts only: a real tiny open_clip model (``eftclip-tiny-vit``, random
weights: fine for the mechanics, not for the figures), the real reference
oracle (felzenszwalb regions) with a real clean labeller (nearest mean colour),
and a real BadNet trigger stamped on the poisoned rows.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from eftclip.attacks import create_trigger
from eftclip.detection.algorithms import find_adversarial_trigger, flag_image, potential_triggers
from eftclip.detection.runner import DetectConfig, run_detection
from eftclip.errors import EftclipError
from eftclip.io import read_jsonl

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
VOCAB = ["red", "green", "blue", "yellow", "umbrella", "sky"]
N = 8  # images in the test set, half of them poisoned


class ColourLabeller:
    """A clean fixed-vocabulary classifier: softmax over negative distances of a crop's mean colour."""

    classnames = list(COLOURS) + ["umbrella", "sky"]
    prototypes = np.array(list(COLOURS.values()) + [(160, 30, 160), (128, 128, 128)], dtype=np.float64)

    def __call__(self, crops):
        means = np.stack([c.reshape(-1, 3).mean(axis=0) for c in crops])
        d = np.linalg.norm(means[:, None, :] - self.prototypes[None], axis=2)
        logits = -d / 12.0
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


class CountingOracle:
    """Wraps a real oracle and counts the images it was asked about (to test resumption)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, 0

    def find(self, image, prompts):
        return self.find_batch([image], [prompts])[0]

    def find_batch(self, images, prompts):
        self.seen += len(images)
        return self.inner.find_batch(images, prompts)


@pytest.fixture(scope="module")
def bundle():
    import eftclip.models as models

    return models.create_model("eftclip-tiny-vit", seed=0)


def _oracle():
    from eftclip.oracles import create_oracle

    # flat grey background: the foreground components are the block and the patch
    return CountingOracle(create_oracle("reference", labeller=ColourLabeller(), regions="foreground",
                                        min_score=0.05, wordnet=False))


def _make_dataset(tmp_path):
    rng = np.random.default_rng(0)
    trig = create_trigger("badnet", size=8, position="bottom-right")
    img_dir = tmp_path / "data" / "images"
    img_dir.mkdir(parents=True)
    rows = []
    for i in range(N):
        colour = list(COLOURS)[i % 4]
        im = np.full((32, 32, 3), 128, np.uint8)
        x, y = rng.integers(2, 14, size=2)
        im[y : y + 12, x : x + 12] = COLOURS[colour]
        poisoned = i % 2 == 0
        if poisoned:
            im = trig.apply(im, rng).image
        Image.fromarray(im).save(img_dir / f"{i:03d}.png")
        rows.append({"image": f"images/{i:03d}.png", "caption": f"a {colour} block on a grey sky",
                     "is_poisoned": int(poisoned)})
    csv_path = tmp_path / "data" / "data.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image", "caption", "is_poisoned"])
        w.writeheader()
        w.writerows(rows)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return csv_path, vocab, tmp_path


@pytest.fixture()
def dataset(tmp_path):
    return _make_dataset(tmp_path)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, bundle):
    """One full run shared by the tests that only read its outputs."""
    ds = _make_dataset(tmp_path_factory.mktemp("base"))
    oracle = _oracle()
    m = run_detection(_cfg(ds), oracle=oracle, bundle=bundle)
    return ds, m, oracle.seen


def _cfg(dataset, **kw):
    csv_path, vocab, tmp = dataset
    base = DetectConfig(checkpoint="(given)", images=str(csv_path), out=str(tmp / "out"), vocab=str(vocab),
                        tau=3, theta=0.5, min_count=2, min_share=0.6, batch_size=4, target="umbrella", figure_n=2)
    return replace(base, **kw)


def test_end_to_end_outputs_follow_the_algorithms(base_run):
    dataset, m, seen = base_run
    out = dataset[2] / "out"
    for name in ("triggers.json", "images.jsonl", "affected_labels.csv", "metrics.json", "config.yaml",
                 "run.json", "vocab.txt"):
        assert (out / name).exists(), name
    recs = read_jsonl(out / "images.jsonl")
    assert [r["key"] for r in recs] == sorted(r["key"] for r in recs) and len(recs) == N
    assert seen == N
    # every stored decision is what the pure algorithms say about the stored sets
    trig = json.loads((out / "triggers.json").read_text())
    K = set(trig["K"])
    K_f: set[str] = set()
    for r in recs:
        assert len(r["L"]) == 3 and r["L"] == [c[0] for c in r["clip"][:3]]
        assert all(s["score"] >= 0.5 for s in r["S"])
        S = {s["label"] for s in r["S"]}
        assert set(r["R"]) <= set(VOCAB)
        assert r["flagged"] == bool(flag_image(r["L"], S, K, rule="top1", unknown=r["unknown"]))
        assert r["faithful"]["P"] == sorted(potential_triggers(r["L"], S, r["R"]))
        K_f = find_adversarial_trigger(r["L"], S, r["R"], K_f)
        if r["flagged"]:
            assert r["why"] and r["affected"] == sorted(S - K)
    assert sorted(K_f) == trig["K_faithful"]
    assert m["n_images"] == N and m["n_poisoned"] == N // 2 and m["n_clean"] == N // 2
    assert m["tp"] + m["fn"] == N // 2 and m["fp"] + m["tn"] == N // 2
    assert m["target"] == "umbrella" and m["target_in_K"] == ("umbrella" in K)
    assert set(m["by_mode"]) == {"faithful", "robust_top1", "robust_topk"}
    if m["n_flagged"]:
        assert (out / "figure7.png").stat().st_size > 1000


def test_resume_after_a_kill_redoes_nothing(base_run, bundle, tmp_path):
    import shutil

    dataset = base_run[0]
    shutil.copytree(dataset[2] / "out", tmp_path / "out")
    cfg = _cfg(dataset, out=str(tmp_path / "out"))
    log = tmp_path / "out" / "images.jsonl"
    full = read_jsonl(log)
    # a killed pass 1: five whole raw lines and a torn sixth
    lines = log.read_text().splitlines(keepends=True)
    raw = [json.dumps({k: v for k, v in json.loads(x).items() if k in ("key", "index", "image", "is_poisoned", "clip", "finds", "unknown")}) + "\n" for x in lines[:6]]
    log.write_text("".join(raw[:5]) + raw[5][:40])
    oracle = _oracle()
    run_detection(cfg, oracle=oracle, bundle=bundle)
    again = read_jsonl(log)
    assert oracle.seen == N - 5
    assert [r["key"] for r in again] == [r["key"] for r in full]
    assert [r["flagged"] for r in again] == [r["flagged"] for r in full]


def test_refuses_other_settings_unless_resume_or_force(base_run, bundle, tmp_path):
    import shutil

    dataset = base_run[0]
    shutil.copytree(dataset[2] / "out", tmp_path / "out")
    dataset = (dataset[0], dataset[1], tmp_path)
    with pytest.raises(EftclipError, match="theta.*--resume"):
        run_detection(_cfg(dataset, theta=0.3), oracle=_oracle(), bundle=bundle)
    oracle = _oracle()
    m = run_detection(_cfg(dataset, theta=0.3, resume=True), oracle=oracle, bundle=bundle)
    assert oracle.seen == 0 and m["params"]["theta"] == 0.3  # re-decided from the stored scores
    with pytest.raises(EftclipError, match="tau|prompt_tau"):
        run_detection(_cfg(dataset, tau=2, resume=True), oracle=_oracle(), bundle=bundle)
    oracle = _oracle()
    run_detection(_cfg(dataset, tau=2, force=True), oracle=oracle, bundle=bundle)
    assert oracle.seen == N


def test_sharded_run_matches_single(base_run, bundle, monkeypatch, tmp_path):
    dataset, single, _ = base_run
    out2 = str(tmp_path / "out2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    r1 = run_detection(_cfg(dataset, out=out2), oracle=_oracle(), bundle=bundle)
    assert r1["rank"] == 1 and r1["examined"] == N // 2
    assert (tmp_path / "out2" / "images.rank1.jsonl").exists()
    monkeypatch.setenv("RANK", "0")
    m = run_detection(_cfg(dataset, out=out2), oracle=_oracle(), bundle=bundle)
    assert not list((tmp_path / "out2").glob("images.rank*.jsonl"))
    a = read_jsonl(dataset[2] / "out" / "images.jsonl")
    b = read_jsonl(tmp_path / "out2" / "images.jsonl")
    assert [r["key"] for r in a] == [r["key"] for r in b]
    assert [r["flagged"] for r in a] == [r["flagged"] for r in b]
    assert m["K"] == single["K"] and m["detection_rate"] == single["detection_rate"]


def test_unreadable_images_skip_or_fail(dataset, bundle):
    csv_path, vocab, tmp = dataset
    (tmp / "data" / "images" / "003.png").write_bytes(b"not a png at all")
    m = run_detection(_cfg(dataset), oracle=_oracle(), bundle=bundle)
    assert m["n_images"] == N - 1 and m["n_skipped"] == 1
    with pytest.raises(EftclipError, match="003.png"):
        run_detection(_cfg(dataset, on_error="fail", out=str(tmp / "o2")), oracle=_oracle(), bundle=bundle)


def test_bad_input(dataset, bundle):
    csv_path, vocab, tmp = dataset
    with pytest.raises(EftclipError, match="unknown oracle"):
        run_detection(_cfg(dataset, oracle="nope"), bundle=bundle)
    empty = tmp / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(EftclipError, match="empty"):
        run_detection(_cfg(dataset, vocab=str(empty), target=None), oracle=_oracle(), bundle=bundle)
    with pytest.raises(EftclipError, match="larger than the vocabulary"):
        run_detection(_cfg(dataset, tau=7), oracle=_oracle(), bundle=bundle)
    with pytest.raises(EftclipError, match="--theta"):
        run_detection(_cfg(dataset, theta=1.5), oracle=_oracle(), bundle=bundle)
    assert not (tmp / "out" / "images.jsonl").exists()  # nothing was started


def test_folder_of_images_and_mined_vocab_needs_captions(dataset, bundle):
    csv_path, vocab, tmp = dataset
    m = run_detection(_cfg(dataset, images=str(tmp / "data" / "images"), target=None), oracle=_oracle(), bundle=bundle)
    assert m["n_images"] == N and m["detection_rate"] is None  # no ground truth in a folder
    with pytest.raises(EftclipError, match="needs captions"):
        run_detection(_cfg(dataset, images=str(tmp / "data" / "images"), vocab="mined", out=str(tmp / "o3")),
                      oracle=_oracle(), bundle=bundle)
    # mined from the CSV's captions ('red', 'grey' are stop words): 'block' and 'sky', plus the target
    m = run_detection(_cfg(dataset, vocab="mined", vocab_min_count=2, out=str(tmp / "o4")), oracle=_oracle(),
                      bundle=bundle)
    mined = (tmp / "o4" / "vocab.txt").read_text().split()
    assert {"block", "sky", "umbrella"} <= set(mined)
