"""The defense reads only what a real defender has: a tiny world run end to end, ground truth blanked or shuffled.

Real parts: a tiny synthetic world, a real BadNet-poisoned detection set, a
real tiny CLIP (random weights: the mechanics, not the figures), the world's
own oracle (flat-region proposals named by a region classifier trained here on
the clean reference split), the second look and curation with unlearning pairs.
The detection set's ``is_poisoned``, ``orig_caption`` and ``trigger`` columns
are ground truth for scoring only: blanking or shuffling them must leave every
decision, the second look and the curated set byte-identical.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest

from eftclip.world import WorldSize, synth, train_region_classifier, world_paths

TINY = WorldSize(train=8, pool=60, detect=16, reference_per_class=20, eval_per_class=2)
TRUTH_COLUMNS = ("is_poisoned", "orig_caption", "trigger")
# detection files whose bytes must not depend on the truth (metrics.json and figure7.png score against it)
DECISIONS = ("triggers.json", "affected_labels.csv", "vocab.txt", "config.yaml", "run.json",
             "second_look.jsonl", "affected_labels_second_look.csv", "second_look.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from eftclip.attacks import create_trigger
    from eftclip.attacks.poison import poison_dataset
    from eftclip.io import read_json
    import eftclip.models as models

    tmp = tmp_path_factory.mktemp("blind")
    synth(tmp / "world", seed=0, size=TINY)
    paths = world_paths(tmp / "world")
    rc = train_region_classifier(paths["reference"], tmp / "rc.safetensors", seed=0, epochs=4)
    poison_dataset(paths["detect_csv"], create_trigger("badnet", size=6, position="bottom-right"), "umbrella",
                   num=8, out=tmp / "dset", seed=0, avoid_target=True, progress=False)
    (tmp / "vocab.txt").write_text("\n".join(read_json(paths["classnames"])) + "\n")
    return {"tmp": tmp, "paths": paths, "rc": rc, "bundle": models.create_model("eftclip-tiny-vit", seed=0)}


def _defend(world) -> dict[str, bytes]:
    """Detection, second look and curation into fixed folders; the bytes of every decision file."""
    from eftclip.curation import curate
    from eftclip.detection.runner import DetectConfig, run_detection
    from eftclip.detection.second_look import run_second_look

    tmp = world["tmp"]
    det, ft = tmp / "det", tmp / "ft"
    shutil.rmtree(det, ignore_errors=True)
    shutil.rmtree(ft, ignore_errors=True)
    cfg = DetectConfig(checkpoint="(given)", images=str(tmp / "dset" / "data.csv"), out=str(det),
                       vocab=str(tmp / "vocab.txt"), oracle="reference",
                       oracle_args={"region_classifier": str(world["rc"]), "regions": "world", "wordnet": False},
                       tau=3, theta=0.5, min_count=2, min_share=0.6, batch_size=8, figure_n=0)
    run_detection(cfg, bundle=world["bundle"])
    # a low theta: the region classifier trained here for seconds is unsure, and the test needs found objects
    run_second_look(det, theta=0.15, progress=False)
    curate(det, world["paths"]["pool_csv"], size=20, unaffected_ratio=0.5, out=ft, seed=0, unlearn_share=0.25)
    out = {name: (det / name).read_bytes() for name in DECISIONS}
    out["images.jsonl"] = "".join(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "is_poisoned"}) + "\n"
        for line in (det / "images.jsonl").read_text().splitlines()).encode()
    out["raw images.jsonl"] = (det / "images.jsonl").read_bytes()
    out["K"] = json.dumps(json.loads((det / "metrics.json").read_text())["K"]).encode()
    for name in ("finetune.csv", "manifest.json", "config.yaml"):
        out[f"ft/{name}"] = (ft / name).read_bytes()
    return out


def _rewrite_truth(csv_path, change) -> None:
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    for col in TRUTH_COLUMNS:
        values = change([r[col] for r in rows])
        for r, v in zip(rows, values):
            r[col] = v
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows(rows)


def test_blanked_or_shuffled_truth_changes_nothing(world):
    csv_path = world["tmp"] / "dset" / "data.csv"
    original = csv_path.read_bytes()
    reference = _defend(world)
    manifest = json.loads(reference["ft/manifest.json"])
    assert manifest["unlearn"]["taken"] > 0, "the run must exercise unlearning pairs"
    assert json.loads(reference["second_look.json"])["n_flagged"] > 0

    rng = np.random.default_rng(3)
    for change in (lambda vals: [""] * len(vals), lambda vals: [vals[i] for i in rng.permutation(len(vals))]):
        _rewrite_truth(csv_path, change)
        assert csv_path.read_bytes() != original
        again = _defend(world)
        # the changed truth did reach the run (images.jsonl carries it for scoring) ...
        assert again.pop("raw images.jsonl") != reference["raw images.jsonl"]
        # ... and changed no decision
        for name in set(reference) - {"raw images.jsonl"}:
            assert again[name] == reference[name], f"{name} changed with the ground-truth columns"
        csv_path.write_bytes(original)


def test_world_truth_and_profile_scores(world):
    from eftclip.detection.profile_truth import score_detection
    from eftclip.world.truth import detection_truth, scene_objects

    from eftclip.data.captions import read_captions

    _defend(world)
    tmp, paths = world["tmp"], world["paths"]
    # fine-tuning reads the curated set, unlearning pairs (triggered detection images) included
    table = read_captions(tmp / "ft" / "finetune.csv")
    assert len(table.records) == 20 and not table.skipped
    assert any(os.path.dirname(r.image) == str(tmp / "dset" / "images") for r in table.records)
    objects, triggered = detection_truth(tmp / "dset" / "data.csv", [paths["detect_meta"]])
    assert len(objects) == TINY.detect and sum(bool(v) for v in triggered.values()) == 8
    # a triggered row's objects are those of the scene it was made from (poison manifest)
    scenes = scene_objects(paths["detect_meta"])
    entries = json.loads((tmp / "dset" / "manifest.json").read_text())["poisoned"]
    for e in entries:
        ref = os.path.normpath(str(tmp / "dset" / e["image"]))
        assert objects[ref] == scenes[os.path.realpath(e["source_image"])]
        assert triggered[ref] is True
    scored = score_detection(tmp / "det", objects, triggered)
    assert set(scored) == {"paper", "second_look"}
    n_flagged_triggered = sum(1 for line in (tmp / "det" / "images.jsonl").read_text().splitlines()
                              if json.loads(line).get("flagged") and triggered[json.loads(line)["image"]])
    for block in scored.values():
        assert block["n_images"] == n_flagged_triggered
        assert block["tv_distance"] is None or 0.0 <= block["tv_distance"] <= 1.0
