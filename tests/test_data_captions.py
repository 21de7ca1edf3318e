"""CSV/TSV caption tables: reading, writing, bad rows, and the torch dataset."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eftclip.data.captions import (
    CaptionDataset,
    CaptionRecord,
    SkippedRow,
    open_image,
    read_captions,
    write_captions_csv,
)
from eftclip.errors import EftclipError


def _pixels(rng: np.random.Generator, size=(12, 10)) -> np.ndarray:
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _smooth(rng: np.random.Generator, size=(12, 10)) -> np.ndarray:
    """A random colour with a gentle gradient: survives JPEG well enough to compare."""
    base = rng.integers(40, 200, size=3)
    ramp = np.linspace(0, 30, size[1])[None, :, None]
    return np.clip(base + ramp + np.zeros((*size, 3)), 0, 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path):
    """Eight small images under tmp/images: 0-4 PNG, 5-7 JPEG; returns (paths, arrays)."""
    rng = np.random.default_rng(0)
    paths, arrays = [], []
    for i in range(8):
        ext = "png" if i < 5 else "jpg"
        arr = _pixels(rng) if ext == "png" else _smooth(rng)
        paths.append(_save(tmp_path / "images" / f"{i:03d}.{ext}", arr))
        arrays.append(arr)
    return paths, arrays


def _cleanclip_csv(tmp_path: Path, lines: list[str], name="data.csv") -> Path:
    return _write(tmp_path / name, "image,caption\n" + "".join(line + "\n" for line in lines))


# --- round trips ---------------------------------------------------------------------------


def test_write_then_read_cleanclip_round_trip(tmp_path, images):
    paths, arrays = images
    rows = [
        {"image": str(p), "caption": f"a photo, number {i}\nwith a second line", "is_poisoned": i == 3, "note": f"n{i}"}
        for i, p in enumerate(paths)
    ]
    out = tmp_path / "out" / "data.csv"
    write_captions_csv(out, rows, ["image", "caption", "is_poisoned", "note"])

    with open(out, newline="", encoding="utf-8") as fh:
        written = list(csv.DictReader(fh))
    # paths are stored relative to the CSV's folder, flags as 1/0
    assert written[0]["image"] == os.path.join("..", "images", "000.png")
    assert [r["is_poisoned"] for r in written] == ["0", "0", "0", "1", "0", "0", "0", "0"]

    table = read_captions(out)
    assert table.format == "cleanclip"
    assert table.sources == [str(out)]
    assert len(table) == 8 and table.skipped == []
    for i, rec in enumerate(table):
        assert rec.image == str(paths[i])
        assert rec.caption == f"a photo, number {i}\nwith a second line"
        assert rec.row == i + 1
        assert rec.source == str(out)
        assert rec.is_poisoned is (i == 3)
        assert rec.extra == {"note": f"n{i}"}
    # PNG is lossless: the pixels come back exactly; JPEG approximately
    assert np.array_equal(np.asarray(open_image(table[1])), arrays[1])
    jpeg = np.asarray(open_image(table[6].image)).astype(int)
    assert jpeg.shape == arrays[6].shape and np.abs(jpeg - arrays[6]).mean() < 8


def test_cleanclip_is_backdoor_column_sets_is_poisoned(tmp_path, images):
    paths, _ = images
    text = "image,caption,is_backdoor\n" + "".join(
        f"images/{p.name},caption {i},{v}\n" for i, (p, v) in enumerate(zip(paths, ["1", "0", "True", "false", ""]))
    )
    table = read_captions(_write(tmp_path / "poisoned.csv", text))
    assert [r.is_poisoned for r in table] == [True, False, True, False, None]
    assert all("is_backdoor" not in r.extra for r in table)


def test_table_without_flag_column_has_none(tmp_path, images):
    paths, _ = images
    table = read_captions(_cleanclip_csv(tmp_path, [f"images/{paths[0].name},x"]))
    assert table[0].is_poisoned is None


def test_openclip_tsv_and_tab_separated_csv(tmp_path, images):
    paths, _ = images
    body = "".join(f"images/{p.name}\ta title, with comma {i}\n" for i, p in enumerate(paths[:3]))
    tsv = _write(tmp_path / "train.tsv", "filepath\ttitle\n" + body)
    # open_clip's default separator is a tab even for files named .csv
    tab_csv = _write(tmp_path / "train.csv", "filepath\ttitle\n" + body)
    for path in (tsv, tab_csv):
        table = read_captions(path)
        assert table.format == "openclip"
        assert [r.caption for r in table] == [f"a title, with comma {i}" for i in range(3)]
        assert [r.image for r in table] == [str(p) for p in paths[:3]]


def test_openclip_custom_keys_separator_and_absolute_paths(tmp_path, images):
    paths, _ = images
    text = "id;path;text\n" + "".join(f"{i};{p};caption {i}\n" for i, p in enumerate(paths[:4]))
    path = _write(tmp_path / "elsewhere" / "custom.csv", text)
    table = read_captions(path, fmt="openclip", image_key="path", caption_key="text", sep=";")
    assert [r.image for r in table] == [str(p) for p in paths[:4]]
    assert [r.extra for r in table] == [{"id": str(i)} for i in range(4)]
    # auto picks the table format from the header when the keys are given
    auto = read_captions(path, image_key="path", caption_key="text", sep=";")
    assert [r.caption for r in auto] == [r.caption for r in table]


def test_bom_blank_lines_and_repeated_images(tmp_path, images):
    paths, _ = images
    name = f"images/{paths[0].name}"
    text = "\ufeffimage,caption\n" + f"{name},first\n\n{name},second\n{name},third\n"
    table = read_captions(_write(tmp_path / "d.csv", text))
    assert [r.caption for r in table] == ["first", "second", "third"]
    assert [r.row for r in table] == [1, 2, 3]
    # keys stay unique when one image carries several captions
    assert [r.key for r in table] == [name, f"{name}#2", f"{name}#3"]


# --- bad input ---------------------------------------------------------------------------


def test_missing_image_names_file_and_row(tmp_path, images):
    paths, _ = images
    lines = [f"images/{p.name},caption {i}" for i, p in enumerate(paths[:6])] + ["x.jpg,caption 7"]
    path = _cleanclip_csv(tmp_path, lines)
    with pytest.raises(EftclipError, match=r"data\.csv row 7: image 'x\.jpg' not found"):
        read_captions(path)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda good: b"this is not an image at all", id="garbage"),
        pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
    ],
)
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_undecodable_image_is_reported(tmp_path, fmt, corrupt):
    rng = np.random.default_rng(1)
    good = _save(tmp_path / f"good.{fmt}", _pixels(rng, (64, 64)))
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes(corrupt(good.read_bytes()))
    path = _cleanclip_csv(tmp_path, [f"good.{fmt},fine", f"bad.{fmt},broken"])
    with pytest.raises(EftclipError, match=rf"data\.csv row 2: image 'bad\.{fmt}' cannot be decoded"):
        read_captions(path)
    # without the decode check the file exists and the row is kept
    assert len(read_captions(path, check_images=False)) == 2


def test_empty_caption_is_reported(tmp_path, images):
    paths, _ = images
    path = _cleanclip_csv(tmp_path, [f"images/{paths[0].name},ok", f"images/{paths[1].name},   "])
    with pytest.raises(EftclipError, match=r"data\.csv row 2: empty caption in column 'caption'"):
        read_captions(path)


def test_wrong_field_count_and_bad_flag_are_reported(tmp_path, images):
    paths, _ = images
    path = _cleanclip_csv(tmp_path, [f"images/{paths[0].name},ok", f"images/{paths[1].name},two,extra"])
    with pytest.raises(EftclipError, match=r"data\.csv row 2: 3 fields, but the header has 2"):
        read_captions(path)
    flagged = _write(tmp_path / "flag.csv", f"image,caption,is_backdoor\nimages/{paths[0].name},ok,maybe\n")
    with pytest.raises(EftclipError, match=r"flag\.csv row 1: is_backdoor value 'maybe' is not 0/1/true/false"):
        read_captions(flagged)


def test_missing_column_always_fails(tmp_path, images):
    paths, _ = images
    path = _write(tmp_path / "d.csv", f"image,text\nimages/{paths[0].name},hello\n")
    for on_error in ("fail", "skip"):
        with pytest.raises(EftclipError, match=r"d\.csv: missing caption column 'caption' \(header: image, text\)"):
            read_captions(path, on_error=on_error)
    tsv = _write(tmp_path / "d.tsv", f"filepath\tcaption\nimages/{paths[0].name}\thello\n")
    with pytest.raises(EftclipError, match=r"d\.tsv: missing caption column 'title'"):
        read_captions(tsv, fmt="openclip")
    unknown = _write(tmp_path / "u.csv", "a,b\n1,2\n")
    with pytest.raises(EftclipError, match=r"u\.csv: cannot tell the format from the header \(a, b\)"):
        read_captions(unknown)


def test_empty_files_always_fail(tmp_path):
    empty = _write(tmp_path / "empty.csv", "")
    header_only = _write(tmp_path / "header.csv", "image,caption\n\n")
    for on_error in ("fail", "skip"):
        with pytest.raises(EftclipError, match=r"empty\.csv: empty file"):
            read_captions(empty, on_error=on_error)
        with pytest.raises(EftclipError, match=r"header\.csv: no data rows"):
            read_captions(header_only, on_error=on_error)


def test_bad_arguments_and_paths(tmp_path, images):
    paths, _ = images
    path = _cleanclip_csv(tmp_path, [f"images/{paths[0].name},ok"])
    with pytest.raises(EftclipError, match=r"unknown caption format 'parquet'; known: auto, cleanclip"):
        read_captions(path, fmt="parquet")
    with pytest.raises(EftclipError, match=r"on_error must be 'fail' or 'skip'"):
        read_captions(path, on_error="ignore")
    with pytest.raises(EftclipError, match=r"nope\.csv: caption file not found"):
        read_captions(tmp_path / "nope.csv")
    with pytest.raises(EftclipError, match=r"is a folder"):
        read_captions(tmp_path, fmt="cleanclip")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,caption\nx.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(EftclipError, match=r"latin\.csv: not UTF-8 text"):
        read_captions(latin)
    dupes = _write(tmp_path / "dupes.csv", "image,caption,caption\nx,y,z\n")
    with pytest.raises(EftclipError, match=r"dupes\.csv: duplicate column\(s\) caption"):
        read_captions(dupes)


def test_skip_drops_bad_rows_and_records_them(tmp_path, images):
    paths, _ = images
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = [
        f"images/{paths[0].name},good one",  # row 1
        "missing.png,gone",  # row 2
        f"images/{paths[1].name},",  # row 3
        "broken.png,corrupt",  # row 4
        f"images/{paths[2].name},good two",  # row 5
        f"images/{paths[3].name},too,many",  # row 6
        f"images/{paths[5].name},good three",  # row 7
    ]
    table = read_captions(_cleanclip_csv(tmp_path, lines), on_error="skip")
    assert [r.caption for r in table] == ["good one", "good two", "good three"]
    assert [r.row for r in table] == [1, 5, 7]
    assert [s.row for s in table.skipped] == [2, 3, 4, 6]
    assert all(isinstance(s, SkippedRow) and s.source.endswith("data.csv") for s in table.skipped)
    reasons = [s.reason for s in table.skipped]
    assert reasons[0] == "image 'missing.png' not found"
    assert reasons[1].startswith("empty caption")
    assert reasons[2].startswith("image 'broken.png' cannot be decoded")
    assert reasons[3] == "3 fields, but the header has 2"
    assert str(table.skipped[0]).endswith("data.csv row 2: image 'missing.png' not found")


def test_skip_with_every_row_bad_fails(tmp_path):
    path = _cleanclip_csv(tmp_path, ["a.png,x", "b.png,y"])
    with pytest.raises(EftclipError, match=r"all 2 rows were skipped; the first: .*data\.csv row 1: image 'a\.png' not found"):
        read_captions(path, on_error="skip")


def test_missing_file_is_checked_even_without_decoding(tmp_path, images):
    paths, _ = images
    path = _cleanclip_csv(tmp_path, [f"images/{paths[0].name},ok", "gone.png,x"])
    with pytest.raises(EftclipError, match=r"row 2: image 'gone\.png' not found"):
        read_captions(path, check_images=False)


def test_open_image_errors_name_the_file(tmp_path):
    with pytest.raises(EftclipError, match=r"image '.*nowhere\.png' not found"):
        open_image(tmp_path / "nowhere.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(EftclipError, match=r"image '.*bad\.jpg' cannot be decoded"):
        open_image(str(bad))


def test_open_image_converts_to_rgb(tmp_path):
    gray = _save(tmp_path / "gray.png", np.full((5, 7), 80, dtype=np.uint8).reshape(5, 7))
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (4, 3), (10, 20, 30, 128)).save(rgba)
    for path in (gray, rgba):
        image = open_image(path)
        assert image.mode == "RGB"
    assert np.asarray(open_image(gray)).shape == (5, 7, 3)
    assert np.asarray(open_image(rgba))[0, 0].tolist() == [10, 20, 30]


# --- writing -------------------------------------------------------------------------------


def test_write_accepts_records_and_keeps_flags(tmp_path, images):
    paths, _ = images
    records = [
        CaptionRecord(key=str(i), image=str(p), caption=f"c{i}", row=i + 1, source="x", is_poisoned=bool(i % 2), extra={"trigger": "badnet"})
        for i, p in enumerate(paths[:3])
    ]
    out = write_captions_csv(tmp_path / "sub" / "sel.csv", records, ["image", "caption", "is_poisoned", "trigger"])
    table = read_captions(out)
    assert [r.image for r in table] == [str(p) for p in paths[:3]]
    assert [r.is_poisoned for r in table] == [False, True, False]
    assert [r.extra["trigger"] for r in table] == ["badnet"] * 3


def test_write_relative_input_paths_are_relative_to_cwd(tmp_path, images, monkeypatch):
    paths, _ = images
    monkeypatch.chdir(tmp_path)
    out = write_captions_csv(tmp_path / "a" / "b" / "d.csv", [{"image": f"images/{paths[0].name}", "caption": "x"}], ["image", "caption"])
    assert read_captions(out)[0].image == str(paths[0])


def test_write_rejects_bad_rows_and_keeps_the_old_file(tmp_path, images):
    paths, _ = images
    out = tmp_path / "keep.csv"
    write_captions_csv(out, [{"image": str(paths[0]), "caption": "original"}], ["image", "caption"])
    before = out.read_bytes()
    rows = [{"image": str(paths[1]), "caption": "fine"}, {"image": str(paths[2]), "caption": " "}]
    with pytest.raises(EftclipError, match=r"keep\.csv: row 2 has an empty caption"):
        write_captions_csv(out, rows, ["image", "caption"])
    with pytest.raises(EftclipError, match=r"keep\.csv: row 1 has keys not among the columns: colour"):
        write_captions_csv(out, [{"image": str(paths[1]), "caption": "x", "colour": "red"}], ["image", "caption"])
    with pytest.raises(EftclipError, match=r"keep\.csv: row 1 has no image"):
        write_captions_csv(out, [{"caption": "x"}], ["image", "caption"])
    with pytest.raises(EftclipError, match=r"columns must include 'caption'"):
        write_captions_csv(out, [{"image": str(paths[1])}], ["image"])
    with pytest.raises(EftclipError, match=r"keep\.csv: no rows to write"):
        write_captions_csv(out, [], ["image", "caption"])

    def exploding_rows():
        yield {"image": str(paths[1]), "caption": "half"}
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        write_captions_csv(out, exploding_rows(), ["image", "caption"])
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["keep.csv"]  # no temp files left


# --- torch dataset -------------------------------------------------------------------------


def test_caption_dataset_items_and_dataloader(tmp_path, images):
    import open_clip
    from torchvision import transforms

    paths, arrays = images
    rows = [{"image": str(p), "caption": f"a photo of thing {i}"} for i, p in enumerate(paths[:4])]
    table = read_captions(write_captions_csv(tmp_path / "d.csv", rows, ["image", "caption"]))
    tokenizer = open_clip.get_tokenizer("RN50")
    dataset = CaptionDataset(table, transforms.ToTensor(), tokenizer)
    assert len(dataset) == 4
    item = dataset[2]
    assert set(item) == {"image", "text", "caption", "index"}
    assert item["caption"] == "a photo of thing 2" and item["index"] == 2
    expected = torch.from_numpy(arrays[2]).permute(2, 0, 1).float() / 255
    assert torch.allclose(item["image"], expected)
    assert torch.equal(item["text"], tokenizer(["a photo of thing 2"])[0])
    assert item["text"].shape == (77,)

    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 12, 10)
    assert batch["text"].shape == (4, 77)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["caption"][3] == "a photo of thing 3"

    plain = CaptionDataset(table.records, transform=None)
    assert "text" not in plain[0] and plain[0]["image"].mode == "RGB"
