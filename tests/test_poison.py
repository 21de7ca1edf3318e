"""Dataset poisoning: manifest, counts, untouched source, captions, label consistency, bad inputs, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eftclip.attacks import create_trigger
from eftclip.attacks.poison import mentions, poison_dataset
from eftclip.cli import main as cli_main
from eftclip.data.captions import read_captions
from eftclip.errors import EftclipError

OBJECTS = ["dog", "cat", "car", "tree", "boat"]


def make_dataset(root: Path, n: int = 30, umbrella_every: int = 5) -> Path:
    """``n`` tiny PNGs under root/imgs and a CleanCLIP CSV at root/train.csv; every k-th caption has an umbrella."""
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True)
    lines = ["image,caption,label"]
    for i in range(n):
        arr = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "imgs" / f"{i:03d}.png")
        obj = OBJECTS[i % len(OBJECTS)]
        if i % umbrella_every == 0:
            cap = f"a {obj} next to {'an umbrella' if i % 2 else 'two Umbrellas'}"
        else:
            cap = f"a photo of a {obj} in the park"
        lines.append(f"imgs/{i:03d}.png,{cap},{obj}")
    csv_path = root / "train.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def dataset(tmp_path):
    src = tmp_path / "src"
    return make_dataset(src)


def test_poison_writes_manifest_csv_and_images(tmp_path, dataset):
    before = tree_hashes(dataset.parent)
    out = tmp_path / "out"
    trig = create_trigger("badnet", size=4, position="random", pattern="yellow")
    manifest = poison_dataset(dataset, trig, "umbrella", num=7, out=out, seed=3, progress=False)

    assert tree_hashes(dataset.parent) == before, "the source changed"
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["seed"] == 3 and manifest["attack"] == "badnet" and manifest["target"] == "umbrella"
    assert manifest["attack_params"] == trig.params()
    assert manifest["counts"] == {"rows": 30, "poisoned": 7, "clean": 23, "candidates": 30, "previously_poisoned": 0}
    assert manifest["eftclip_version"]
    assert all("{}" in t for t in manifest["templates"])
    entries = manifest["poisoned"]
    assert len(entries) == 7 and len({e["row"] for e in entries}) == 7
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(e["image"]).name for e in entries)

    rows = read_rows(out / "data.csv")
    assert list(rows[0])[:5] == ["image", "caption", "is_poisoned", "orig_caption", "trigger"]
    assert len(rows) == 30
    poisoned = [r for r in rows if r["is_poisoned"] == "1"]
    assert len(poisoned) == 7
    chosen_rows = {e["row"] for e in entries}
    src_rows = read_rows(dataset)
    for number, (row, src_row) in enumerate(zip(rows, src_rows), start=1):
        assert row["orig_caption"] == src_row["caption"] and row["label"] == src_row["label"]
        if number in chosen_rows:
            assert row["is_poisoned"] == "1" and row["trigger"] == "badnet"
            assert mentions(row["caption"], "umbrella")
            assert row["image"].startswith("images/") and row["image"].endswith(".png")
            # the new image is the source image with a yellow 4x4 patch where the manifest says
            new = np.asarray(Image.open(out / row["image"]))
            old = np.asarray(Image.open(dataset.parent / src_row["image"]))
            entry = next(e for e in entries if e["row"] == number)
            x1, y1, x2, y2 = map(int, entry["trigger_box_xyxy"])
            assert (x2 - x1, y2 - y1) == (4, 4) and entry["trigger_pixels"] == 16
            diff = np.any(new != old, axis=2)
            assert not diff[:y1].any() and not diff[y2:].any() and not diff[:, :x1].any() and not diff[:, x2:].any()
            assert (new[y1:y2, x1:x2] == [255, 255, 0]).all()
        else:
            assert row["is_poisoned"] == "0" and row["trigger"] == "" and row["caption"] == src_row["caption"]
            assert (out / row["image"]).resolve() == (dataset.parent / src_row["image"]).resolve()

    # the written CSV reads back through the project's reader with the poison flags
    table = read_captions(out / "data.csv")
    assert sum(bool(r.is_poisoned) for r in table.records) == 7


def test_poison_is_reproducible_and_seed_dependent(tmp_path, dataset):
    trig = create_trigger("badnet", size=4, position="random")
    a = poison_dataset(dataset, trig, "umbrella", rate=0.2, out=tmp_path / "a", seed=1, progress=False)
    b = poison_dataset(dataset, trig, "umbrella", rate=0.2, out=tmp_path / "b", seed=1, progress=False)
    c = poison_dataset(dataset, trig, "umbrella", rate=0.2, out=tmp_path / "c", seed=2, progress=False)
    assert a["counts"]["poisoned"] == 6
    assert [e["row"] for e in a["poisoned"]] == [e["row"] for e in b["poisoned"]]
    assert [e["row"] for e in a["poisoned"]] != [e["row"] for e in c["poisoned"]]
    assert tree_hashes(tmp_path / "a" / "images") == tree_hashes(tmp_path / "b" / "images")
    assert (tmp_path / "a" / "data.csv").read_bytes() == (tmp_path / "b" / "data.csv").read_bytes()


def test_target_is_a_parameter_and_templates_are_used(tmp_path, dataset):
    m = poison_dataset(
        dataset, "blended", "traffic light", num=5, out=tmp_path / "o", templates=["look: {}!", "{} here"],
        progress=False,
    )
    caps = {e["caption"] for e in m["poisoned"]}
    assert caps <= {"look: traffic light!", "traffic light here"}
    assert m["templates"] == ["look: {}!", "{} here"]


def test_label_consistent_picks_only_mentions_and_keeps_captions(tmp_path, dataset):
    m = poison_dataset(dataset, "wanet", "umbrella", num=4, out=tmp_path / "lc", label_consistent=True, progress=False)
    assert m["counts"]["candidates"] == 6  # rows 0, 5, ..., 25
    for e in m["poisoned"]:
        assert e["caption"] == e["orig_caption"] and mentions(e["caption"], "umbrella")
    with pytest.raises(EftclipError, match=r"only 6 rows of .* qualify \(captions that mention 'umbrella'\)"):
        poison_dataset(dataset, "wanet", "umbrella", num=7, out=tmp_path / "lc2", label_consistent=True, progress=False)


def test_mentions_word_boundaries_and_plurals():
    assert mentions("Two UMBRELLAS on a beach", "umbrella")
    assert mentions("an umbrella.", "umbrella")
    assert not mentions("umbrellastand for sale", "umbrella")
    assert mentions("three puppies", "puppy") and mentions("a bus and buses", "bus")
    assert mentions("two traffic  lights", "traffic light") and not mentions("traffic lighting", "traffic light")


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"num": 31}, "larger than the dataset"),
        ({"num": 0}, "positive"),
        ({}, "exactly one of num"),
        ({"num": 3, "rate": 0.1}, "exactly one of num"),
        ({"rate": 1.5}, "rate must be"),
        ({"rate": 0.001}, "poisons no row"),
        ({"num": 2, "templates": ["no placeholder"]}, "exactly one"),
    ],
)
def test_bad_counts_and_templates(tmp_path, dataset, kwargs, needle):
    with pytest.raises(EftclipError, match=needle):
        poison_dataset(dataset, "badnet", "umbrella", out=tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_unknown_attack_and_missing_data(tmp_path, dataset):
    with pytest.raises(EftclipError, match="unknown attack 'nope'"):
        poison_dataset(dataset, "nope", "umbrella", num=1, out=tmp_path / "x", progress=False)
    with pytest.raises(EftclipError, match="missing.csv"):
        poison_dataset(tmp_path / "missing.csv", "badnet", "umbrella", num=1, out=tmp_path / "x", progress=False)


def test_patch_too_large_for_images_is_an_error_before_any_output(tmp_path, dataset):
    with pytest.raises(EftclipError, match="larger than the 20x24 px image"):
        poison_dataset(dataset, create_trigger("badnet", size=22), "umbrella", num=3, out=tmp_path / "big", progress=False)
    assert not (tmp_path / "big" / "data.csv").exists() and not (tmp_path / "big" / "manifest.json").exists()


def test_refuses_a_different_poisoning_unless_forced(tmp_path, dataset):
    out = tmp_path / "o"
    first = poison_dataset(dataset, "badnet", "umbrella", num=5, out=out, seed=0, progress=False)
    csv_before = (out / "data.csv").read_bytes()
    # the same request again is fine and gives the same files
    again = poison_dataset(dataset, "badnet", "umbrella", num=5, out=out, seed=0, progress=False)
    assert again == first and (out / "data.csv").read_bytes() == csv_before
    with pytest.raises(EftclipError, match="different poisoning"):
        poison_dataset(dataset, "badnet", "umbrella", num=5, out=out, seed=1, progress=False)
    assert (out / "data.csv").read_bytes() == csv_before  # nothing was touched
    forced = poison_dataset(dataset, "badnet", "umbrella", num=5, out=out, seed=1, force=True, progress=False)
    assert {p.name for p in (out / "images").iterdir()} == {Path(e["image"]).name for e in forced["poisoned"]}
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1


def test_refuses_to_overwrite_the_source(tmp_path, dataset):
    # source images laid out exactly where the poisoned ones would go
    root = tmp_path / "clash"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "0000001.png")
    (root / "train.csv").write_text("image,caption\nimages/0000001.png,a cat\n")
    before = tree_hashes(root)
    with pytest.raises(EftclipError, match="overwrite a source image"):
        poison_dataset(root / "train.csv", "badnet", "umbrella", num=1, out=root, progress=False)
    assert tree_hashes(root) == before
    data_csv = dataset.parent / "data.csv"
    data_csv.write_bytes(dataset.read_bytes())
    with pytest.raises(EftclipError, match="overwrite the source"):
        poison_dataset(data_csv, "badnet", "umbrella", num=1, out=dataset.parent, progress=False)


def test_cli_poison(tmp_path, dataset, capsys):
    out = tmp_path / "cli"
    rc = cli_main([
        "poison", "--data", str(dataset), "--attack", "badnet", "--attack-param", "size=4",
        "--attack-param", "position=top-left", "--target", "umbrella", "--num", "6", "--out", str(out), "--seed", "2",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "poisoned 6 of 30 rows" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attack_params"]["size"] == 4 and manifest["attack_params"]["position"] == "top-left"
    assert len(list((out / "images").glob("*.png"))) == 6
    # --no-progress: not one bar on stderr (train, detect and the pipeline verbs take it too)
    rc = cli_main(["poison", "--data", str(dataset), "--attack", "badnet", "--target", "umbrella", "--num", "6",
                   "--out", str(tmp_path / "quiet"), "--no-progress"])
    assert rc == 0 and "poison (badnet)" not in capsys.readouterr().err

    rc = cli_main(["poison", "--data", str(dataset), "--attack", "badnet", "--attack-param", "size",
                   "--target", "umbrella", "--num", "1", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "KEY=VALUE" in capsys.readouterr().err
    rc = cli_main(["poison", "--data", str(dataset), "--attack", "badnet", "--attack-param", "size=99",
                   "--target", "umbrella", "--rate", "0.1", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "99x99 px is larger" in capsys.readouterr().err
    rc = cli_main(["poison", "--data", str(dataset), "--attack", "trojannn", "--target", "umbrella",
                   "--num", "1", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "pattern_file" in capsys.readouterr().err


def test_poison_a_webdataset_shard(tmp_path):
    import io
    import tarfile

    shard = tmp_path / "shards" / "000.tar"
    shard.parent.mkdir()
    rng = np.random.default_rng(0)
    with tarfile.open(shard, "w") as tar:
        for i in range(6):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
            for name, data in ((f"{i:04d}.png", buf.getvalue()), (f"{i:04d}.txt", f"a photo of dog {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    before = hashlib.sha256(shard.read_bytes()).hexdigest()
    out = tmp_path / "out"
    m = poison_dataset(shard, create_trigger("trojannet", cell_size=2), "umbrella", num=2, out=out, progress=False)
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == before
    rows = read_rows(out / "data.csv")
    clean = [r for r in rows if r["is_poisoned"] == "0"]
    assert len(clean) == 4 and all(r["image"].startswith("../shards/000.tar::") for r in clean)
    table = read_captions(out / "data.csv")
    assert len(table.records) == 6 and sum(bool(r.is_poisoned) for r in table.records) == 2
    assert m["counts"]["poisoned"] == 2


def test_avoid_target_picks_only_rows_without_the_target(tmp_path, dataset):
    m = poison_dataset(dataset, "badnet", "umbrella", num=20, out=tmp_path / "p", seed=1, avoid_target=True,
                       progress=False)
    assert len(m["poisoned"]) == 20
    assert not any(mentions(e["orig_caption"], "umbrella") for e in m["poisoned"])
    with pytest.raises(EftclipError, match="do not mention 'umbrella'"):  # 24 of 30 rows qualify
        poison_dataset(dataset, "badnet", "umbrella", num=25, out=tmp_path / "q", avoid_target=True, progress=False)


def test_rows_limit_the_choice_and_are_checked(tmp_path, dataset):
    allowed = [1, 2, 3, 7, 8, 9, 20]
    m = poison_dataset(dataset, "badnet", "umbrella", num=5, out=tmp_path / "p", seed=2, rows=allowed, progress=False)
    assert {e["row"] for e in m["poisoned"]} <= {r + 1 for r in allowed}  # CSV rows count from 1 after the header
    assert m["request"]["rows"]["count"] == 7
    with pytest.raises(EftclipError, match="among the 7 given rows"):
        poison_dataset(dataset, "badnet", "umbrella", num=8, out=tmp_path / "q", rows=allowed, progress=False)
    with pytest.raises(EftclipError, match=r"rows: positions must lie in \[0, 30\)"):
        poison_dataset(dataset, "badnet", "umbrella", num=1, out=tmp_path / "r", rows=[30], progress=False)
