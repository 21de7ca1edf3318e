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


def test_bad_study_configs_name_the_problem(cifar_slice, tmp_path):
    from eftclip.errors import EftclipError
    from eftclip.pipeline.study import config_from_mapping

    base = yaml.safe_load(CONFIG.read_text())
    base["data"]["root"] = str(cifar_slice)
    with pytest.raises(EftclipError, match="unknown attack 'nope'"):
        config_from_mapping({**base, "attacks": [{"name": "nope"}]})
    with pytest.raises(EftclipError, match="unknown key 'epochz'"):
        config_from_mapping({**base, "model": {"epochz": 3}})
    with pytest.raises(EftclipError, match="finetune.size"):
        config_from_mapping({**base, "finetune": {"size": 10_000}})
    with pytest.raises(EftclipError, match="data.root"):
        config_from_mapping({**base, "data": {**base["data"], "root": str(tmp_path / "missing")}})
    with pytest.raises(EftclipError, match="attacks"):
        config_from_mapping({k: v for k, v in base.items() if k != "attacks"})


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_study_end_to_end_resumes_and_reuses_the_cache(cifar_slice, tmp_path):
    from eftclip.cli import main

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["root"] = str(cifar_slice)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(["study", "--config", str(path), "--out", str(out), "--cache", str(cache)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())

    # the paper's tables, in three formats, and the figures
    for stem in ("table5_attacks", "table4_roclip", "results_badnet", "results_trojannn", "detection", "stages", "goal"):
        for ext in ("md", "csv", "json"):
            assert (out / "tables" / f"{stem}.{ext}").is_file(), f"{stem}.{ext}"
    for fig in ("table5_attacks.png", "ca_asr_badnet.png", "ca_asr_trojannn.png"):
        assert (out / "figures" / fig).stat().st_size > 1000
    t5 = _read_csv(out / "tables" / "table5_attacks.csv")
    assert [r["Attack"] for r in t5] == ["badnet", "trojannn"]
    for m, row in zip(metrics["attacks"], t5):
        assert float(row["ASR before"]) == pytest.approx(m["poisoned"]["asr"])
        for key in ("clean", "poisoned"):
            assert 0 <= m[key]["ca"] <= 1 and 0 <= m[key]["asr"] <= 1
        e, c, big = (m["defenses"][k] for k in ("eftclip", "cleanclip", "cleanclip_large"))
        assert e["finetune_pairs"] == c["finetune_pairs"] == 20 and big["finetune_pairs"] == 40
        assert e["seconds"] > 0 and c["seconds"] > 0
        # 10% of the training pairs whose class is not the target (poisoning skips target-class images)
        assert 0.09 * 171 <= m["poisoned_pairs"] <= 0.11 * 190
        assert set(m["detection"]) >= {"triggers", "detection_rate", "precision", "false_positive_rate"}
    assert metrics["roclip"]["attack"] == "badnet" and 0 <= metrics["roclip"]["roclip"]["ca"] <= 1
    stages = {r["stage"]: r for r in metrics["stages"]}
    assert not any(r["reused"] for r in stages.values())
    assert stages["train_clean"]["compute_seconds"] > 0
    report = (out / "report.md").read_text()
    assert "Table 5" in report and "Table 4" in report and "Stage times" in report
    readme = (out / "README.md").read_text()
    assert "Command and machine" in readme and "train_clean" in readme and "nproc" in readme
    # the trojannn patch was optimised against the clean CLIP and saved in the cache
    trig = json.loads((out / "stages" / "trojannn" / "trigger.json").read_text())["result"]
    assert Path(trig["params"]["pattern_file"]).is_file()
    # the oracle's labeller trained on the reference split only
    labeller = json.loads((out / "stages" / "train_labeller.json").read_text())["result"]
    train_cfg = yaml.safe_load((Path(labeller["checkpoint"]).parent / "config.yaml").read_text())
    assert train_cfg["data"].endswith("reference.csv")

    # running again: every stage is done, nothing recomputed
    markers = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.json")}
    folders = {p.name for p in cache.iterdir()}
    assert main(["study", "--config", str(path), "--out", str(out), "--cache", str(cache)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.json")} == markers
    assert {p.name for p in cache.iterdir()} == folders
    assert json.loads((out / "metrics.json").read_text())["attacks"] == metrics["attacks"]

    # a second study sharing the cache: one attack, another curation ratio, no RoCLIP. Everything
    # upstream of curation is reused; the curated set and what depends on it are made anew.
    cfg2 = dict(cfg, attacks=[{"name": "badnet"}], name="second", roclip={"attack": ""},
                finetune={**cfg["finetune"], "unaffected_ratio": 0.9})
    path2 = tmp_path / "study2.yaml"
    path2.write_text(yaml.safe_dump(cfg2))
    out2 = tmp_path / "out2"
    before = {p.name for p in cache.iterdir()}
    assert main(["study", "--config", str(path2), "--out", str(out2), "--cache", str(cache)]) == 0
    made = sorted(p.name.split("-")[0] for p in cache.iterdir() if p.name not in before)
    assert made == ["curate", "evaluate", "finetune"]  # EftCLIP's set, its fine-tune and its evaluation
    m2 = json.loads((out2 / "metrics.json").read_text())
    reused = {r["stage"]: r["reused"] for r in m2["stages"]}
    for stage in ("data", "train_clean", "train_labeller", "badnet/trigger", "badnet/poison",
                  "badnet/train_poisoned", "badnet/detect", "badnet/finetune_cleanclip"):
        assert reused[stage], stage
    assert not reused["badnet/curate"] and not reused["badnet/finetune_eftclip"]
    assert m2["attacks"][0]["poisoned"] == metrics["attacks"][0]["poisoned"]
    assert m2["attacks"][0]["defenses"]["cleanclip"] == metrics["attacks"][0]["defenses"]["cleanclip"] | {"reused": True}
    assert m2["roclip"] is None and not (out2 / "tables" / "table4_roclip.md").exists()


def test_study_refuses_a_foreign_output_folder(cifar_slice, tmp_path):
    from eftclip.cli import main

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["root"] = str(cifar_slice)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["study", "--config", str(path), "--out", str(out)]) == 2
    assert (out / "keep.txt").read_text() == "mine"
