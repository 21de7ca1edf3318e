"""The second look on a hand-made detection folder, with the real reference oracle and real images.

Each image is a grey square with one coloured block; half carry a real BadNet
patch.  The oracle is the reference backend (foreground components) named by
a clean nearest-colour labeller, so what it finds is known: the block's colour.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from eftclip.attacks import create_trigger
from eftclip.detection.second_look import (
    PROFILE_CSV,
    SecondLookConfig,
    affected_of,
    ask_vocabulary,
    oracle_from_detection,
    run_second_look,
    run_second_look_with,
)
from eftclip.errors import EftclipError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
VOCAB = ["red", "green", "blue", "yellow", "umbrella"]


class ColourLabeller:
    """A clean fixed-vocabulary classifier: softmax over negative distances of a crop's mean colour."""

    classnames = list(COLOURS) + ["umbrella", "sky"]
    prototypes = np.array(list(COLOURS.values()) + [(160, 30, 160), (128, 128, 128)], dtype=np.float64)

    def __call__(self, crops):
        means = np.stack([c.reshape(-1, 3).mean(axis=0) for c in crops])
        d = np.linalg.norm(means[:, None, :] - self.prototypes[None], axis=2)
        e = np.exp(-d / 12.0 - (-d / 12.0).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


class CountingOracle:
    """Wraps a real oracle and counts the (image, prompt list) questions it was asked."""

    def __init__(self, inner):
        self.inner, self.asked = inner, 0

    def find(self, image, prompts):
        return self.find_batch([image], [prompts])[0]

    def find_batch(self, images, prompts):
        self.asked += len(images)
        return self.inner.find_batch(images, prompts)


def _oracle():
    from eftclip.oracles import create_oracle

    return create_oracle("reference", labeller=ColourLabeller(), regions="foreground", min_score=0.05, wordnet=False)


def _detection_folder(tmp_path, n=8):
    """A finished detection folder: images, images.jsonl (flags, misleading ground truth), K, vocab, config."""
    rng = np.random.default_rng(0)
    trig = create_trigger("badnet", size=6, position="bottom-right")
    colours = {}
    lines = []
    for i in range(n):
        colour = list(COLOURS)[i % 4]
        im = np.full((32, 32, 3), 128, np.uint8)
        x, y = rng.integers(2, 12, size=2)
        im[y : y + 12, x : x + 12] = COLOURS[colour]
        if i % 2 == 0:
            im = trig.apply(im, rng).image
        path = tmp_path / "images" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(path)
        colours[str(path)] = colour
        # is_poisoned and the paper's affected labels are deliberately wrong: the second look must not read them
        lines.append({"key": f"{i:03d}", "image": str(path), "is_poisoned": i % 3 == 0, "flagged": i != 7,
                      "affected": ["umbrella"], "clip": [["umbrella", 0.9]]})
    det = tmp_path / "det"
    det.mkdir(parents=True)
    (det / "images.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (det / "metrics.json").write_text(json.dumps({"K": ["umbrella"]}))
    (det / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (det / "config.yaml").write_text("oracle: reference\noracle_args: {}\ntheta: 0.5\n")
    (det / "affected_labels.csv").write_text("label,count,frequency\numbrella,7,1.000000\n")
    return det, colours


def test_second_look_names_what_is_in_each_flagged_image(tmp_path):
    det, colours = _detection_folder(tmp_path)
    paper_before = (det / "affected_labels.csv").read_bytes()
    summary = run_second_look_with(_oracle(), det, SecondLookConfig(progress=False))
    rows = [json.loads(x) for x in (det / "second_look.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [f"{i:03d}" for i in range(7)]  # flagged only, dataset order
    for r in rows:
        assert r["affected"] == [colours[r["image"]]], r
        assert r["theta"] == 0.5 and "umbrella" not in r["affected"]
    # the CSV has the paper's table's format; the paper's own outputs are untouched
    with open(det / PROFILE_CSV, newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["label", "count", "frequency"]
    assert {row[0]: int(row[1]) for row in table[1:]} == {"red": 2, "green": 2, "blue": 2, "yellow": 1}
    assert table[1][2] == "0.285714"
    assert (det / "affected_labels.csv").read_bytes() == paper_before
    assert summary["n_flagged"] == 7 and summary["n_with_affected"] == 7 and summary["K"] == ["umbrella"]
    assert json.loads((det / "second_look.json").read_text()) == summary


def test_resumes_and_redecides_without_the_oracle(tmp_path):
    det, _ = _detection_folder(tmp_path)
    oracle = CountingOracle(_oracle())
    cfg = SecondLookConfig(prompt_batch=2, image_batch=3, progress=False)
    run_second_look_with(oracle, det, cfg)
    assert oracle.asked == 7 * 3  # 5 labels in batches of 2: three questions per image
    full = (det / "second_look.jsonl").read_bytes()
    # a killed run: two rows and a torn third line; the rerun asks only about the five missing images
    lines = full.decode().splitlines(keepends=True)
    (det / "second_look.jsonl").write_text(lines[0] + lines[1] + lines[2][:20])
    oracle.asked = 0
    run_second_look_with(oracle, det, cfg)
    assert oracle.asked == 5 * 3
    assert (det / "second_look.jsonl").read_bytes() == full
    # another theta: decided again from the stored scores, no question asked
    rows = [json.loads(x) for x in full.decode().splitlines()]
    rows[0]["found"] = {"red": 0.6, "blue": 0.4, "umbrella": 0.9}
    (det / "second_look.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    oracle.asked = 0
    loose = run_second_look_with(oracle, det, SecondLookConfig(theta=0.3, progress=False))
    first = json.loads((det / "second_look.jsonl").read_text().splitlines()[0])
    assert oracle.asked == 0 and loose["theta"] == 0.3
    assert first["affected"] == ["blue", "red"] and first["theta"] == 0.3
    run_second_look_with(oracle, det, SecondLookConfig(theta=0.5, progress=False))
    first = json.loads((det / "second_look.jsonl").read_text().splitlines()[0])
    assert oracle.asked == 0 and first["affected"] == ["red"]


def test_prompt_batches_do_not_change_the_answer(tmp_path):
    det, _ = _detection_folder(tmp_path)
    image = np.asarray(Image.open(tmp_path / "images" / "001.png").convert("RGB"))
    whole = ask_vocabulary(_oracle(), [image], VOCAB, prompt_batch=64)
    split = ask_vocabulary(_oracle(), [image], VOCAB, prompt_batch=1)
    assert whole == split
    found, unknown = whole[0]
    assert unknown == [] and affected_of(found, ["umbrella"], 0.5) == ["green"]
    assert affected_of({"green": 0.5, "umbrella": 0.9, "red": 0.49}, {"umbrella"}, 0.5) == ["green"]


def test_oracle_rebuilt_from_the_detection_config(tmp_path):
    import eftclip.models as models
    from eftclip.oracles import create_oracle

    det, _ = _detection_folder(tmp_path)
    ckpt = models.save_checkpoint(models.create_model("eftclip-tiny-vit", seed=0).model, tmp_path / "clean.safetensors",
                                  model_name="eftclip-tiny-vit")
    args = {"labeller_checkpoint": str(ckpt), "regions": "foreground", "vocabulary": VOCAB}
    (det / "config.yaml").write_text(json.dumps({"oracle": "reference", "oracle_args": args, "theta": 0.2}))
    rebuilt = oracle_from_detection(det)
    image = np.asarray(Image.open(tmp_path / "images" / "002.png").convert("RGB"))
    direct = create_oracle("reference", **args).find(image, VOCAB)
    assert rebuilt.find(image, VOCAB) == direct and direct.found
    assert oracle_from_detection(det, regions="grid").find(image, VOCAB) != direct
    summary = run_second_look(det, progress=False)  # the one-line form: the recorded oracle, the recorded theta
    assert summary["theta"] == 0.2 and summary["oracle"] == "reference" and summary["n_flagged"] == 7


def test_errors_name_the_missing_file(tmp_path):
    det, _ = _detection_folder(tmp_path)
    (det / "metrics.json").unlink()
    with pytest.raises(EftclipError, match="metrics.json"):
        run_second_look_with(_oracle(), det)
    det2, _ = _detection_folder(tmp_path / "b")
    with pytest.raises(EftclipError, match="theta"):
        run_second_look_with(_oracle(), det2, SecondLookConfig(theta=1.5))


class PromptCountingOracle(CountingOracle):
    """Counts the prompts asked per image as well."""

    def __init__(self, inner):
        super().__init__(inner)
        self.prompts: list[list[str]] = []

    def find_batch(self, images, prompts):
        self.prompts.extend(list(p) for p in prompts)
        return super().find_batch(images, prompts)


def test_max_prompts_asks_only_the_clean_rankers_top_labels(tmp_path):
    import eftclip.models as models
    from eftclip.detection.second_look import ClipRanker

    det, _ = _detection_folder(tmp_path)
    ranker = ClipRanker(models.create_model("eftclip-tiny-vit", seed=0), VOCAB)
    images = [np.asarray(Image.open(tmp_path / "images" / f"{i:03d}.png").convert("RGB")) for i in range(3)]
    top2, top5 = ranker(images, 2), ranker(images, 5)
    assert all(len(a) == 2 and a == b[:2] and sorted(b) == sorted(VOCAB) for a, b in zip(top2, top5))

    oracle = PromptCountingOracle(_oracle())
    with pytest.raises(EftclipError, match="ranker"):
        run_second_look_with(oracle, det, SecondLookConfig(max_prompts=2, progress=False))
    summary = run_second_look_with(oracle, det, SecondLookConfig(max_prompts=2, progress=False), ranker=ranker)
    rows = [json.loads(x) for x in (det / "second_look.jsonl").read_text().splitlines()]
    assert oracle.asked == 7 and all(len(p) == 2 for p in oracle.prompts)
    assert [r["prompts"] for r in rows] == oracle.prompts
    assert rows[0]["prompts"] == top2[0]
    assert all(set(r["affected"]) <= set(r["prompts"]) - {"umbrella"} for r in rows)
    assert summary["max_prompts"] == 2
