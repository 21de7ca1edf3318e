"""Webdataset tar shards: shard patterns, sample grouping, bad samples, tar members in workers."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eftclip.data import images as images_module
from eftclip.data.captions import CaptionDataset, open_image, read_captions, write_captions_csv
from eftclip.data.shards import expand_braces, resolve_shards, split_member_name
from eftclip.errors import EftclipError


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shards(tmp_path):
    """Three shards of four PNG samples each under tmp/shards/{000..002}.tar.

    Returns (folder, arrays) where arrays[(shard, i)] is the sample's pixels.
    """
    rng = np.random.default_rng(0)
    arrays = {}
    for s in range(3):
        members = []
        for i in range(4):
            arr = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
            arrays[(s, i)] = arr
            key = f"s{s}/{i:05d}"
            members += [(f"{key}.png", _encode(arr, "PNG")), (f"{key}.txt", f"shard {s} sample {i}\n".encode())]
        _write_tar(tmp_path / "shards" / f"{s:03d}.tar", members)
    (tmp_path / "shards" / "README.md").write_text("not a shard")
    return tmp_path / "shards", arrays


def test_brace_expansion():
    assert expand_braces("s/{000..003}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar", "s/003.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("{9..11}") == ["9", "10", "11"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(EftclipError, match=r"unbalanced"):
        expand_braces("s/{000..003.tar")


def test_member_names_split_into_key_and_extension():
    assert split_member_name("d/0001.seg.png") == ("d/0001", "seg.png")
    assert split_member_name("0001.JPG") == ("0001", "jpg")
    assert split_member_name("a.b/c.txt") == ("a.b/c", "txt")


@pytest.mark.parametrize("spec", ["folder", "single", "glob", "brace"])
def test_read_shards_by_every_spec(shards, spec):
    folder, arrays = shards
    path = {
        "folder": folder,
        "single": folder / "001.tar",
        "glob": f"{folder}/*.tar",
        "brace": f"{folder}/{{000..002}}.tar",
    }[spec]
    table = read_captions(path)
    wanted = [1] if spec == "single" else [0, 1, 2]
    assert table.format == "webdataset"
    assert table.sources == [str(folder / f"{s:03d}.tar") for s in wanted]
    assert [r.caption for r in table] == [f"shard {s} sample {i}" for s in wanted for i in range(4)]
    first = table[0]
    assert first.key == f"s{wanted[0]}/00000"
    assert first.image == f"{folder / f'{wanted[0]:03d}.tar'}::s{wanted[0]}/00000.png"
    assert first.source == str(folder / f"{wanted[0]:03d}.tar")
    # row = 1-based member index of the image: members go png, txt, png, txt, ...
    assert [r.row for r in table][:4] == [1, 3, 5, 7]
    for rec, (s, i) in zip(table, [(s, i) for s in wanted for i in range(4)]):
        assert np.array_equal(np.asarray(open_image(rec)), arrays[(s, i)])


def test_auto_detects_webdataset_and_fmt_can_force_it(shards):
    folder, _ = shards
    assert read_captions(folder / "000.tar", fmt="webdataset").format == "webdataset"
    with pytest.raises(EftclipError, match=r"sep applies to CSV/TSV files"):
        read_captions(folder / "000.tar", sep=",")


def test_shard_specs_that_match_nothing(tmp_path, shards):
    folder, _ = shards
    with pytest.raises(EftclipError, match=r"shard pattern '.*/\*\.tgz' matches no files"):
        read_captions(f"{folder}/*.tgz")
    with pytest.raises(EftclipError, match=r"003\.tar: tar shard not found"):
        read_captions(f"{folder}/{{000..003}}.tar")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(EftclipError, match=r"empty_folder: folder holds no \.tar shards"):
        read_captions(tmp_path / "empty_folder")
    assert [p.name for p in resolve_shards(folder)] == ["000.tar", "001.tar", "002.tar"]
    with pytest.raises(EftclipError, match=r"README\.md: not a \.tar shard"):
        read_captions(f"{folder}/*")


def test_csv_with_glob_characters_in_its_name_is_still_a_csv(tmp_path):
    Image.new("RGB", (3, 3)).save(tmp_path / "a.png")
    path = tmp_path / "runs[1].csv"
    path.write_text("image,caption\na.png,hello\n")
    table = read_captions(path)
    assert table.format == "cleanclip" and table[0].caption == "hello"


def test_other_members_become_extra_and_json_sets_the_flag(tmp_path):
    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    members = [
        ("a.jpg", _encode(arr, "JPEG")),
        ("a.txt", b"clean caption"),
        ("a.json", json.dumps({"is_poisoned": False, "source": "x"}).encode()),
        ("b.jpeg", _encode(arr, "JPEG")),
        ("b.txt", b"poisoned caption"),
        ("b.json", json.dumps({"is_backdoor": 1}).encode()),
        ("b.cls", b"7"),
        ("c.png", _encode(arr, "PNG")),
        ("c.caption", b"other caption key"),
        ("c.txt", b"plain"),
    ]
    path = _write_tar(tmp_path / "mixed.tar", members)
    table = read_captions(path)
    assert [r.is_poisoned for r in table] == [False, True, None]
    assert table[1].extra["cls"] == "7"
    assert json.loads(table[0].extra["json"])["source"] == "x"
    assert table[2].extra == {"caption": "other caption key"}
    # caption_key / image_key choose the members by extension
    chosen = read_captions(path, caption_key="caption", image_key="png", on_error="skip")
    assert [r.caption for r in chosen] == ["other caption key"]
    assert len(chosen.skipped) == 2


@pytest.mark.parametrize(
    "members, message",
    [
        ([("k.png", b"BAD"), ("k.txt", b"hello")], r"member 3 \(sample 'k'\): image 'k\.png' cannot be decoded"),
        ([("k.png", b"IMG")], r"member 3 \(sample 'k'\): no caption member \(txt\) among k\.png"),
        ([("k.txt", b"hello")], r"member 3 \(sample 'k'\): no image member \(jpg\|jpeg\|png\) among k\.txt"),
        ([("k.png", b"IMG"), ("k.txt", b"  \n")], r"member 3 \(sample 'k'\): empty caption in 'k\.txt'"),
        ([("k.png", b"IMG"), ("k.txt", b"caf\xe9")], r"member 3 \(sample 'k'\): caption 'k\.txt' is not UTF-8 text"),
        ([("k.png", b"IMG"), ("k.txt", b"x"), ("k.json", b"{oops")], r"member 3 \(sample 'k'\): 'k\.json' is not valid JSON"),
    ],
)
def test_bad_samples_name_shard_and_member(tmp_path, members, message):
    good = _encode(np.full((5, 5, 3), 7, dtype=np.uint8), "PNG")
    fill = {b"IMG": good, b"BAD": good[:40]}  # BAD: a truncated PNG
    members = [(name, fill.get(data, data)) for name, data in members]
    # the first sample is fine; the second (members 3+) carries the defect
    path = _write_tar(tmp_path / "bad.tar", [("j.png", good), ("j.txt", b"fine")] + members)
    with pytest.raises(EftclipError, match=r"bad\.tar " + message):
        read_captions(path)
    table = read_captions(path, on_error="skip")
    assert [r.key for r in table] == ["j"]
    assert [(s.source, s.row) for s in table.skipped] == [(str(path), 3)]
    assert table.skipped[0].reason.startswith("sample 'k': ")


def test_corrupt_member_passes_without_decode_check(tmp_path):
    good = _encode(np.zeros((5, 5, 3), dtype=np.uint8), "PNG")
    path = _write_tar(tmp_path / "t.tar", [("a.png", good), ("a.txt", b"ok"), ("b.png", b"junk"), ("b.txt", b"ok")])
    assert len(read_captions(path, check_images=False)) == 2
    with pytest.raises(EftclipError, match=r"t\.tar::b\.png' cannot be decoded"):
        open_image(read_captions(path, check_images=False)[1])


def test_not_a_tar_and_an_empty_tar(tmp_path):
    fake = tmp_path / "fake.tar"
    fake.write_bytes(b"definitely not a tar archive" * 30)
    with pytest.raises(EftclipError, match=r"fake\.tar: not a readable tar file"):
        read_captions(fake)
    empty = _write_tar(tmp_path / "empty.tar", [])
    with pytest.raises(EftclipError, match=r"empty\.tar: no samples in 1 shard"):
        read_captions(empty, on_error="skip")


def test_csv_can_point_into_shards(tmp_path, shards):
    folder, arrays = shards
    table = read_captions(folder / "002.tar")
    out = write_captions_csv(tmp_path / "sel" / "subset.csv", table.records[1:3], ["image", "caption"])
    assert out.read_text().splitlines()[1] == "../shards/002.tar::s2/00001.png,shard 2 sample 1"
    back = read_captions(out)
    assert [r.image for r in back] == [r.image for r in table.records[1:3]]
    assert np.array_equal(np.asarray(open_image(back[0])), arrays[(2, 1)])
    # a member that is not in the shard is a bad row of the CSV
    bad = tmp_path / "sel" / "bad.csv"
    bad.write_text("image,caption\n../shards/002.tar::nope.png,x\n")
    with pytest.raises(EftclipError, match=r"bad\.csv row 1: image '\.\./shards/002\.tar::nope\.png' cannot be read .*no member 'nope\.png'"):
        read_captions(bad)
    gone = tmp_path / "sel" / "gone.csv"
    gone.write_text("image,caption\n../shards/009.tar::x.png,x\n")
    with pytest.raises(EftclipError, match=r"gone\.csv row 1: tar shard '.*009\.tar' not found"):
        read_captions(gone)


def test_tar_handles_are_reopened_after_fork(shards, monkeypatch):
    folder, _ = shards
    record = read_captions(folder / "000.tar")[0]
    open_image(record)
    shard = str(folder / "000.tar")
    parent_handle = images_module._TARS.get(shard)
    assert images_module._TARS.get(shard) is parent_handle  # cached within a process
    real_pid = os.getpid()
    monkeypatch.setattr(images_module.os, "getpid", lambda: real_pid + 100000)
    child_handle = images_module._TARS.get(shard)
    assert child_handle is not parent_handle
    assert not parent_handle.tar.closed  # the parent's handle is left alone, not closed
    images_module.close_tar_handles()


def test_dataloader_workers_read_tar_members(shards):
    folder, arrays = shards
    table = read_captions(folder)
    # the parent opens the shards first, so forked workers inherit open handles
    for rec in table:
        open_image(rec)
    dataset = CaptionDataset(table, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, shuffle=False, num_workers=2, multiprocessing_context="fork"
    )
    seen = {}
    for batch in loader:
        for index, image in zip(batch["index"].tolist(), batch["image"]):
            seen[index] = image.numpy()
    assert sorted(seen) == list(range(12))
    order = [(s, i) for s in range(3) for i in range(4)]
    for index, key in enumerate(order):
        assert np.array_equal(seen[index], arrays[key])
