"""Zero-shot data: image folders, class names and templates (built-in sets, JSON files, real CIFAR-10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eftclip.data.zeroshot import ImageFolderSet, load_classnames, load_templates
from eftclip.errors import EftclipError

SHARED_DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def _folder(tmp_path: Path) -> Path:
    """root/{sea_lion,cat,dog} with 3/2/1 images (mixed formats) plus things to ignore."""
    root = tmp_path / "root"
    layout = {"sea_lion": ["b.png", "a.jpg", "c.JPEG"], "cat": ["2.png", "1.png"], "dog": ["x.jpeg"]}
    value = 0
    for cls, files in layout.items():
        (root / cls).mkdir(parents=True)
        for name in files:
            value += 20
            fmt = "JPEG" if name.lower().endswith(("jpg", "jpeg")) else "PNG"
            Image.fromarray(np.full((6, 4), value, dtype=np.uint8)).save(root / cls / name, format=fmt)
        (root / cls / "notes.txt").write_text("not an image")
        (root / cls / ".hidden.png").write_bytes(b"not read")
    (root / ".cache").mkdir()
    (root / "stray.png").write_bytes(b"a file at the top level is not a class")
    return root


def test_image_folder_classes_samples_and_loading(tmp_path):
    root = _folder(tmp_path)
    data = ImageFolderSet(root)
    assert data.classes == ["cat", "dog", "sea_lion"]
    assert data.classnames == ["cat", "dog", "sea lion"]
    names = [(Path(p).parent.name, Path(p).name, i) for p, i in data.samples]
    assert names == [
        ("cat", "1.png", 0), ("cat", "2.png", 0), ("dog", "x.jpeg", 1),
        ("sea_lion", "a.jpg", 2), ("sea_lion", "b.png", 2), ("sea_lion", "c.JPEG", 2),
    ]
    assert all(Path(p).is_absolute() for p, _ in data.samples)
    assert len(data) == 6 and data.targets == [0, 0, 1, 2, 2, 2]
    image = data.load(1)
    assert image.mode == "RGB" and image.size == (4, 6)
    # cat/2.png was written with grey level 80 (4th image written overall)
    assert np.asarray(image)[0, 0].tolist() == [80, 80, 80]
    pil, label = data[3]
    assert label == 2 and pil.mode == "RGB"
    # deterministic: a second scan gives the same order
    assert ImageFolderSet(root).samples == data.samples


def test_max_per_class_keeps_the_first_files(tmp_path):
    data = ImageFolderSet(_folder(tmp_path), max_per_class=2)
    assert [Path(p).name for p, _ in data.samples] == ["1.png", "2.png", "x.jpeg", "a.jpg", "b.png"]
    with pytest.raises(EftclipError, match=r"max_per_class must be at least 1"):
        ImageFolderSet(_folder(tmp_path / "again"), max_per_class=0)


def test_classnames_as_list_mapping_and_json(tmp_path):
    root = _folder(tmp_path)
    assert ImageFolderSet(root, ["kitty", "puppy", "seal"]).classnames == ["kitty", "puppy", "seal"]
    mapping = {"sea_lion": "sea lion (animal)", "dog": "doggo", "cat": "kitty", "unused": "extra keys are fine"}
    assert ImageFolderSet(root, mapping).classnames == ["kitty", "doggo", "sea lion (animal)"]
    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps(mapping))
    assert ImageFolderSet(root, str(as_json)).classnames == ["kitty", "doggo", "sea lion (animal)"]
    # load_classnames orders a mapping by sorted folder name, like ImageFolderSet
    assert load_classnames(as_json) == ["kitty", "doggo", "sea lion (animal)", "extra keys are fine"]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(["a", "b", "c"]))
    assert ImageFolderSet(root, as_list).classnames == ["a", "b", "c"]


def test_classnames_of_the_wrong_size_or_shape_fail(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(EftclipError, match=r"class names: 2 names for 3 class folders in .*root"):
        ImageFolderSet(root, ["a", "b"])
    with pytest.raises(EftclipError, match=r"class names 'cifar10': 10 names for 3 class folders"):
        ImageFolderSet(root, "cifar10")
    with pytest.raises(EftclipError, match=r"lack 1 class folder\(s\) of .*root: sea_lion"):
        ImageFolderSet(root, {"cat": "cat", "dog": "dog"})
    with pytest.raises(EftclipError, match=r"class name 2 \(''\) is not a non-empty string"):
        ImageFolderSet(root, ["a", "", "c"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "closed"')
    with pytest.raises(EftclipError, match=r"bad\.json: class names file is not valid JSON"):
        load_classnames(bad)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    with pytest.raises(EftclipError, match=r"scalar\.json: class names must be a JSON list or an object"):
        load_classnames(str(scalar))
    with pytest.raises(EftclipError, match=r"missing\.json: class names file not found"):
        load_classnames(tmp_path / "missing.json")
    with pytest.raises(EftclipError, match=r"unknown class-name set 'cifar100'; known: cifar10, imagenet1k"):
        load_classnames("cifar100")


def test_bad_folders_fail(tmp_path):
    with pytest.raises(EftclipError, match=r"nowhere: image folder not found"):
        ImageFolderSet(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(EftclipError, match=r"flat: no class folders"):
        ImageFolderSet(tmp_path / "flat")
    (tmp_path / "holey" / "cat").mkdir(parents=True)
    (tmp_path / "holey" / "dog").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "holey" / "cat" / "a.png")
    with pytest.raises(EftclipError, match=r"holey/dog: class folder holds no jpg/jpeg/png images"):
        ImageFolderSet(tmp_path / "holey")


def test_builtin_classnames_come_from_open_clip():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    imagenet = load_classnames("imagenet1k")
    assert imagenet == list(IMAGENET_CLASSNAMES) and len(imagenet) == 1000
    assert load_classnames("cifar10") == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]


def test_builtin_templates():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    openai = load_templates("openai")
    assert len(openai) == 80
    assert [t.format("sea lion") for t in openai] == [f("sea lion") for f in OPENAI_IMAGENET_TEMPLATES]
    simple = load_templates("simple")
    assert [t.format("cat") for t in simple] == [f("cat") for f in SIMPLE_IMAGENET_TEMPLATES]
    cifar = load_templates("cifar10")
    assert cifar and all(t.count("{}") == 1 for t in cifar)
    assert "a photo of a {}." in cifar
    with pytest.raises(EftclipError, match=r"unknown template set 'fancy'; known: openai, simple, cifar10"):
        load_templates("fancy")


def test_templates_from_json_are_validated(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(["a photo of a {}.", "{} in the wild"]))
    assert load_templates(good) == ["a photo of a {}.", "{} in the wild"]
    cases = {
        "two": (["ok {}", "{} and {}"], r"template 2 '\{\} and \{\}' must hold exactly one '\{\}'"),
        "none": (["no placeholder"], r"template 1 'no placeholder' must hold exactly one"),
        "named": (["a {name}"], r"template 1 'a \{name\}' must hold exactly one"),
        "indexed": (["a {0}"], r"template 1 'a \{0\}' must hold exactly one"),
        "spec": (["a {:>5}"], r"template 1 .* must hold exactly one"),
        "stray": (["a {} }"], r"template 1 'a \{\} \}' is not a valid format string"),
        "number": ([3], r"template 1 3 is not a string"),
        "empty": ([], r"empty\.json: no templates"),
        "object": ({"t": "a {}"}, r"object\.json: templates must be a JSON list of strings"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        pattern = message if message.startswith(name) else rf"{name}\.json: {message}"
        with pytest.raises(EftclipError, match=pattern):
            load_templates(str(path))


# --- real data ---------------------------------------------------------------------------


def test_real_cifar10_test_folder_matches_cifar10_classnames():
    root = SHARED_DATA / "cifar10" / "test"
    if not root.is_dir():
        pytest.skip(f"real CIFAR-10 images not available at {root} (../shared/data beside the repo)")
    data = ImageFolderSet(root, "cifar10")
    assert len(data.classes) == 10
    assert data.classes == load_classnames("cifar10") == data.classnames
    assert len(data) == 10_000
    counts = np.bincount(data.targets, minlength=10)
    assert counts.tolist() == [1000] * 10
    for i in (0, 4321, 9999):
        image = data.load(i)
        assert image.mode == "RGB" and image.size == (32, 32)
        assert Path(data.samples[i][0]).parent.name == data.classes[data.samples[i][1]]


def test_list_of_folder_names_in_another_order_is_matched_by_name(tmp_path):
    """The world's classnames.json lists categories in its own order, not sorted: no mislabelling."""
    from PIL import Image

    from eftclip.data.zeroshot import ImageFolderSet

    for name in ("umbrella", "boat", "tree"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "0.png")
    ds = ImageFolderSet(tmp_path, classnames=["umbrella", "boat", "tree"])
    assert ds.classes == ["boat", "tree", "umbrella"]
    assert ds.classnames == ["boat", "tree", "umbrella"]
    for path, index in ds.samples:
        assert f"/{ds.classnames[index]}/" in path
