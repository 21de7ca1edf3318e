"""Verbs that load a CLIP take --model/--pretrained: a cached hub model runs offline, an uncached tag
is one error (exit 2, no traceback) and leaves no output behind."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eftclip.cli import main
from hub_cache import REPO, tiny_hub_repo

UNCACHED = ["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"]


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture()
def data(tmp_path):
    """A folder of 4 images in 2 classes (evaluate) and a CSV over them (detect, sweep, finetune)."""
    root = tmp_path / "data"
    rows = ["image,caption"]
    for c, colour in (("red", (220, 30, 30)), ("blue", (30, 40, 220))):
        (root / c).mkdir(parents=True)
        for i in range(2):
            im = np.full((32, 32, 3), 128, np.uint8)
            im[8:24, 8:24] = colour
            Image.fromarray(im).save(root / c / f"{i}.png")
            rows.append(f"{c}/{i}.png,a {c} square")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def verb_args(verb, data, out):
    """The verb's own flags apart from the CLIP."""
    return {
        "detect": ["detect", "--images", str(data / "data.csv"), "--labels", "red,blue,umbrella", "--vocab-size", "3",
                   "--oracle", "reference", "--out", str(out)],
        "evaluate": ["evaluate", "--data", str(data), "--out", str(out)],
        "sweep": ["sweep", "--images", str(data / "data.csv"), "--labels", "red,blue", "--out", str(out)],
        "finetune": ["finetune", "--data", str(data / "data.csv"), "--epochs", "1", "--out", str(out)],
    }[verb]


@pytest.mark.parametrize("verb", ["detect", "evaluate", "sweep", "finetune"])
def test_uncached_tag_fails_cleanly_and_writes_nothing(verb, offline, data, tmp_path, capsys):
    out = tmp_path / "out" / ("metrics.json" if verb == "evaluate" else "run")
    assert main(verb_args(verb, data, out) + UNCACHED) == 2
    err = capsys.readouterr().err
    assert err.startswith("eftclip: error: --model ViT-B-32 --pretrained laion2b_s34b_b79k")
    assert "not in the local cache" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert list(offline.rglob("*")) == []


def test_evaluate_a_hub_model_by_name_offline(offline, data, tmp_path, capsys):
    tiny_hub_repo(tmp_path, offline)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", f"hf-hub:{REPO}", "--data", str(data), "--out", str(out), "--quiet"]) == 0
    saved = json.loads(out.read_text())
    assert saved["config"]["pretrained"] == f"hf-hub:{REPO}" and saved["config"]["model"] == f"hf-hub:{REPO}"
    # the weights in the hub cache, named relative to the JSON's folder
    assert (out.parent / saved["config"]["checkpoint"]).resolve().is_relative_to(Path(offline).resolve())
    assert saved["metrics"]["n"] == 4 and 0.0 <= saved["metrics"]["ca_top1"] <= 1.0


def test_oracle_model_flag_names_the_backend_argument(data, tmp_path, capsys):
    # --oracle-model on a backend without weights is a named error before anything runs
    args = verb_args("detect", data, tmp_path / "det") + ["--checkpoint", "x.safetensors", "--oracle-model", "m/x"]
    assert main(args) == 2
    assert "--oracle-model: oracle 'reference' takes no weights" in capsys.readouterr().err
    assert not (tmp_path / "det").exists()


def test_detect_and_finetune_a_hub_model_by_name_offline(offline, data, tmp_path):
    from eftclip.models import resolve_clip_weights

    tiny_hub_repo(tmp_path, offline)
    weights, arch = resolve_clip_weights(model=f"hf-hub:{REPO}")  # the cached file, for the oracle's labeller
    det = tmp_path / "det"
    args = verb_args("detect", data, det) + [
        "--model", f"hf-hub:{REPO}", "--oracle-arg", "regions=foreground",
        "--oracle-arg", f"labeller_checkpoint={weights}", "--oracle-arg", f"labeller_model={arch}",
        "--tau", "2", "--min-count", "1", "--batch-size", "4",
    ]
    assert main(args) == 0
    assert json.loads((det / "metrics.json").read_text())["n_images"] == 4
    ft = tmp_path / "ft"
    assert main(verb_args("finetune", data, ft) + ["--model", f"hf-hub:{REPO}", "--batch-size", "4"]) == 0
    # the fine-tuned checkpoint records the hub architecture, so it reloads by its side file
    assert json.loads((ft / "final.json").read_text())["model_name"] == f"hf-hub:{REPO}"
