"""`eftclip study` end to end on a tiny slice of CIFAR-10: splits, stages, tables, resume and reuse."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
CIFAR = SHARED / "cifar10"
CONFIG = Path(__file__).parents[1] / "configs" / "study-tiny.yaml"


def _slice(root: Path, per_class_train: int, per_class_test: int) -> Path:
    """An ImageFolder of the first N CIFAR-10 images per class, as symlinks."""
    if not (CIFAR / "train").is_dir():
        pytest.skip(f"CIFAR-10 not found at {CIFAR} (the shared data folder beside the repo)")
    for part, n in (("train", per_class_train), ("test", per_class_test)):
        for cls in sorted(p for p in (CIFAR / part).iterdir() if p.is_dir()):
            dest = root / part / cls.name
            dest.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (dest / f.name).symlink_to(f.resolve())
    return root


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    return _slice(tmp_path_factory.mktemp("cifar"), 30, 6)


def test_splits_are_disjoint_stratified_and_point_at_originals(cifar_slice, tmp_path):
    from eftclip.data.captions import read_captions
    from eftclip.data.zeroshot import load_templates
    from eftclip.errors import EftclipError
    from eftclip.pipeline.imagefolder_captions import make_splits

    templates = load_templates("cifar10")
    sizes = {"train": None, "pool": 50, "reference": 40, "detect": 20}
    m = make_splits(cifar_slice / "train", tmp_path / "a", sizes=sizes, templates=templates, classnames="cifar10", seed=3)
    tables = {k: read_captions(v["csv"]).records for k, v in m["splits"].items()}
    assert {k: len(v) for k, v in tables.items()} == {"train": 300 - 110, "pool": 50, "reference": 40, "detect": 20}
    images = [r.image for recs in tables.values() for r in recs]
    assert len(images) == len(set(images)) == 300  # disjoint and complete
    assert all(Path(p).parent.parent == cifar_slice / "train" for p in images)  # the original files, no copies
    assert set(m["splits"]["pool"]["per_class"].values()) == {5}
    for r in tables["reference"]:
        label = r.extra["label"]
        assert Path(r.image).parent.name == label.replace(" ", "_") or label in ("automobile", "airplane")
        assert any(t.format(label) == r.caption for t in templates)
    assert len({r.caption.replace(r.extra["label"], "{}") for r in tables["train"]}) > 3  # varied templates
    again = make_splits(cifar_slice / "train", tmp_path / "b", sizes=sizes, templates=templates, classnames="cifar10",
                        seed=3)
    assert [r.image for r in read_captions(again["splits"]["pool"]["csv"]).records] == [r.image for r in tables["pool"]]
    other = make_splits(cifar_slice / "train", tmp_path / "c", sizes=sizes, templates=templates, seed=4)
    assert [r.image for r in read_captions(other["splits"]["pool"]["csv"]).records] != [r.image for r in tables["pool"]]
    with pytest.raises(EftclipError, match="class"):
        make_splits(cifar_slice / "train", tmp_path / "d", sizes={"train": None, "pool": 400}, templates=templates)
    with pytest.raises(EftclipError, match="only one split"):
        make_splits(cifar_slice / "train", tmp_path / "e", sizes={"train": None, "pool": None}, templates=templates)


def _config(cifar_slice, tmp_path, filename="study.yaml", **changes) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["source"]["root"] = str(cifar_slice)
    cfg.update(changes)
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bad_study_configs_name_the_problem(cifar_slice, tmp_path):
    from eftclip.errors import EftclipError
    from eftclip.pipeline.experiment import run_experiment
    from eftclip.pipeline.presets import config_from_mapping

    base = yaml.safe_load(CONFIG.read_text())
    base["source"]["root"] = str(cifar_slice)
    base["out"] = str(tmp_path / "never")

    def check(values):
        run_experiment(config_from_mapping(values))

    with pytest.raises(EftclipError, match="unknown attack 'nope'"):
        check({**base, "attacks": [{"name": "nope"}]})
    with pytest.raises(EftclipError, match="unknown key 'epochz'"):
        check({**base, "pretrain": {"epochz": 3}})
    with pytest.raises(EftclipError, match="exceed the clean pool"):
        check({**base, "budget": 10_000})
    with pytest.raises(EftclipError, match="source.root"):
        check({**base, "source": {**base["source"], "root": str(tmp_path / "missing")}})
    with pytest.raises(EftclipError, match="not a class of cifar10"):
        check({**base, "target": "zebra"})
    assert not (tmp_path / "never").exists()


def test_study_end_to_end_resumes_and_reuses_the_cache(cifar_slice, tmp_path):
    from eftclip.cli import main

    path = _config(cifar_slice, tmp_path)
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(["study", "--config", str(path), "--out", str(out), "--cache", str(cache)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["attack"]["name"] for c in metrics["cells"]] == ["badnet", "trojannn"]
    for m in metrics["cells"]:
        for key in ("clean", "poisoned"):
            assert 0 <= m[key]["ca"] <= 1 and 0 <= m[key]["asr"] <= 1
        e, c, big = (m["defenses"][k] for k in ("eftclip_paper", "cleanclip", "cleanclip_large"))
        assert e["finetune_pairs"] == c["finetune_pairs"] == 20 and big["finetune_pairs"] == 40
        assert e["seconds"] > 0 and c["seconds"] > 0
        # 10% of the training pairs whose class is not the target (poisoning skips target-class images)
        assert 0.09 * 171 <= m["poisoned_pairs"] <= 0.11 * 190
        assert set(m["detection"]) >= {"triggers", "detection_rate", "precision", "false_positive_rate"}
    assert "roclip" in metrics["cells"][0]["defenses"] and "roclip" not in metrics["cells"][1]["defenses"]
    for name in ("report.md", "summary.json", "tables/summary.csv", "tables/paired.json", "figures/matrix.png",
                 "cells/s0-badnet/tables/results.csv", "cells/s0-trojannn/figures/ca_asr.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "95% interval" in report and "Machine:" in report
    # the trojannn patch was optimised against the clean CLIP and saved in the cache
    trig = next(cache.glob("trigger-*/trigger/trojannn_pattern.png"))
    assert trig.is_file()
    # the oracle's labeller trained on the reference split only
    labeller = next(cache.glob("oracle-*/models/labeller/config.yaml"))
    assert yaml.safe_load(labeller.read_text())["data"].endswith("reference.csv")

    # running again: every stage is done, nothing recomputed
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*/stage.json")}
    assert main(["study", "--config", str(path), "--out", str(out), "--cache", str(cache)]) == 0
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/stage.json")} == stamps
    assert json.loads((out / "metrics.json").read_text())["cells"] == metrics["cells"]

    # a second study sharing the cache: one attack, another curation ratio, no RoCLIP. Everything
    # upstream of curation is reused; the curated set and what depends on it are made anew.
    path2 = _config(cifar_slice, tmp_path, "study2.yaml", attacks=[{"name": "badnet"}], name="second",
                    roclip={"attack": ""}, defenses=[{"name": "eftclip_paper", "set": "curated",
                                                      "unaffected_ratio": 0.9}, {"name": "cleanclip", "set": "random"}])
    before = {p.name for p in cache.iterdir()}
    assert main(["study", "--config", str(path2), "--out", str(tmp_path / "out2"), "--cache", str(cache)]) == 0
    made = sorted(p.name.split("-")[0] for p in cache.iterdir() if p.name not in before)
    assert made == ["curate", "evaluate", "finetune"]  # EftCLIP's set, its fine-tune and its evaluation
    m2 = json.loads((tmp_path / "out2" / "metrics.json").read_text())["cells"][0]
    assert m2["poisoned"] == metrics["cells"][0]["poisoned"]
    assert m2["defenses"]["cleanclip"] == metrics["cells"][0]["defenses"]["cleanclip"]


def test_study_refuses_a_foreign_output_folder(cifar_slice, tmp_path):
    from eftclip.cli import main

    path = _config(cifar_slice, tmp_path)
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["study", "--config", str(path), "--out", str(out)]) == 2
    assert main(["study", "--config", str(path), "--out", str(out), "--force"]) == 2
    assert (out / "keep.txt").read_text() == "mine"
