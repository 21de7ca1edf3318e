"""Hostile but realistic input to every verb (issue 14): a named error, inputs untouched, no half-written output.

Each test hashes every input file before and after the command.  Property-based
cases (hypothesis) cover YAML values, CSV cells, trigger parameters and NaN
scores with few examples each, so the module stays well under a minute.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from eftclip.cli import main
from eftclip.errors import EftclipError
from training_fixtures import make_pairs, write_eval_folder

FAST = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (files or folders): the inputs' fingerprint."""
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_refused(argv: list[str], capsys, *inputs: Path, code: int = 2) -> str:
    """Run ``eftclip argv``; assert the exit code, no traceback, and unchanged inputs; return stderr."""
    before = snapshot(*inputs)
    capsys.readouterr()  # drop what earlier commands printed
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("eftclip: error: ") and "Traceback" not in err, err
    assert snapshot(*inputs) == before, "an input changed"
    return err


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A tiny good checkpoint, a NaN one, caption data, an eval folder and a detection folder."""
    from eftclip.models import create_model, save_checkpoint

    root = tmp_path_factory.mktemp("hostile")
    bundle = create_model("eftclip-tiny-rn", seed=0)
    (root / "model").mkdir()
    good = save_checkpoint(bundle.model, root / "model" / "good.safetensors", model_name=bundle.name)
    with torch.no_grad():  # what `--lr 1e3` leaves behind: every weight NaN
        for p in bundle.model.parameters():
            p.fill_(float("nan"))
    (root / "broken").mkdir()
    nan = save_checkpoint(bundle.model, root / "broken" / "nan.safetensors", model_name=bundle.name)
    data = make_pairs(root / "data", 8, fixed_colors=True)
    evald = write_eval_folder(root / "eval", n_per_class=2)
    det = root / "det"
    det.mkdir()
    (det / "affected_labels.csv").write_text("label,count,frequency\nsquare,3,1.0\n")
    (det / "triggers.json").write_text(json.dumps({"K": ["triangle"]}))
    (det / "vocab.txt").write_text("circle\nsquare\ntriangle\ncross\n")
    (det / "config.yaml").write_text("theta: 0.5\n")
    return {"root": root, "good": good, "nan": nan, "data": data, "eval": evald, "det": det}


# --------------------------------------------------------------------------- non-finite values


def test_a_nan_score_is_never_a_hit():
    from eftclip.evaluation.metrics import (attack_success_rate, per_class_rates, predictions, topk_accuracy,
                                            topk_hits)

    nan = float("nan")
    scores = np.array([[nan, nan, nan], [0.1, nan, 0.9], [0.9, 0.2, nan], [nan, 0.5, 0.1]])
    true = np.array([0, 1, 0, 0])
    assert topk_hits(scores, true, 1).tolist() == [False, False, True, False]
    assert topk_hits(scores, true, 3).tolist() == [False, False, True, False]
    assert topk_accuracy(scores, true, 5) == 0.25
    pred = predictions(scores)
    assert pred.tolist() == [-1, 2, 0, 1]  # a row of only NaN predicts no class at all
    rows = per_class_rates(pred, true, 3)
    assert rows[0]["ca_top1"] == pytest.approx(1 / 3) and rows[1]["ca_top1"] == 0.0
    # the NaN row is no attack success either (target 2: only row 1 predicts it)
    assert attack_success_rate(pred, true, 2) == 0.25


@FAST
@given(st.lists(st.lists(st.one_of(st.floats(-5, 5), st.just(float("nan"))), min_size=4, max_size=4),
                min_size=1, max_size=6), st.data())
def test_topk_with_nan_matches_nan_ranked_last(rows, data):
    from eftclip.evaluation.metrics import topk_hits

    s = np.array(rows)
    true = np.array([data.draw(st.integers(0, 3)) for _ in rows])
    k = data.draw(st.integers(1, 4))
    hits = topk_hits(s, true, k)
    true_nan = np.isnan(s[np.arange(len(rows)), true])
    assert not hits[true_nan].any()
    # where the true score is a number, NaN elsewhere behaves as "lower than anything"
    lowered = np.where(np.isnan(s), -1e9, s)
    expected = topk_hits(lowered, true, k)
    assert (hits[~true_nan] == expected[~true_nan]).all()


def test_evaluate_refuses_a_nan_model(kit, capsys):
    out = kit["root"] / "nan-eval.json"
    err = run_refused(["evaluate", "--checkpoint", kit["nan"], "--data", kit["eval"], "--out", out, "--quiet"],
                      capsys, kit["nan"], kit["eval"])
    assert "NaN or infinite" in err and "nan.safetensors" in err
    assert not out.exists()


def test_detect_refuses_a_nan_model(kit, capsys):
    out = kit["root"] / "nan-det"
    err = run_refused(["detect", "--checkpoint", kit["nan"], "--images", kit["data"], "--vocab",
                       kit["det"] / "vocab.txt", "--tau", "3", "--oracle", "reference", "--oracle-arg",
                       f"labeller_checkpoint={kit['good']}", "--out", out], capsys, kit["nan"], kit["data"])
    assert "NaN or infinite" in err
    assert not (out / "triggers.json").exists()


def test_json_is_written_strictly(tmp_path):
    from eftclip.io import NONFINITE_NOTE, append_jsonl, dumps, read_jsonl, write_json

    def no_constants(name):
        raise AssertionError(f"{name} literal in JSON")

    write_json(tmp_path / "m.json", {"metrics": {"ca": float("nan"), "ok": 0.5}, "x": [float("inf")]})
    got = json.loads((tmp_path / "m.json").read_text(), parse_constant=no_constants)
    assert got["metrics"] == {"ca": None, "ok": 0.5} and got["x"] == [None]
    assert got[NONFINITE_NOTE] == ["metrics.ca", "x[0]"]
    with open(tmp_path / "log.jsonl", "w") as fh:
        append_jsonl(fh, {"loss": float("-inf")})
    assert read_jsonl(tmp_path / "log.jsonl")[0]["loss"] is None
    assert dumps({"a": np.float32(1.5)}) == '{"a": 1.5}'  # the fast path keeps numpy support


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from eftclip.io import atomic_open, read_jsonl, write_text

    target = tmp_path / "report.json"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half of a new rep")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    log = tmp_path / "log.jsonl"
    log.write_text('{"a": 1}\n{"a": 2')  # a writer killed mid-line
    assert read_jsonl(log) == [{"a": 1}]


def test_yaml_never_builds_python_objects(tmp_path):
    from eftclip.config import load_yaml

    evil = tmp_path / "evil.yaml"
    evil.write_text("epochs: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(EftclipError, match="evil.yaml: not valid YAML"):
        load_yaml(evil)
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- inputs are sacred


def test_outputs_never_land_on_inputs(kit, capsys):
    k = kit
    cases = [
        # finetune --out = the checkpoint's own folder used to replace its weights
        (["finetune", "--checkpoint", k["good"], "--data", k["data"], "--out", k["good"].parent], "contains"),
        # evaluate --out = the checkpoint used to replace the weights with a JSON report
        (["evaluate", "--checkpoint", k["good"], "--data", k["eval"], "--out", k["good"]], "is the input"),
        # curate --out = the detection folder used to overwrite its config.yaml
        (["curate", "--detection", k["det"], "--pool", k["data"], "--size", "2", "--out", k["det"]], "is the input"),
        (["train", "--data", k["data"], "--model", "eftclip-tiny-rn", "--out", k["data"].parent], "contains"),
        (["detect", "--checkpoint", k["good"], "--images", k["eval"], "--out", k["eval"] / "run"], "lies inside"),
        (["sweep", "--checkpoint", k["good"], "--images", k["data"], "--out", k["root"]], "contains"),
        (["poison", "--data", k["data"], "--attack", "badnet", "--target", "triangle", "--num", "1",
          "--out", k["data"].parent], "contains"),
    ]
    for argv, how in cases:
        err = run_refused(argv, capsys, k["good"], k["data"].parent, k["det"], k["eval"])
        assert how in err and "--out" in err, (argv[0], err)


def _poison(data: Path, out: Path, seed: int, *extra) -> list[str]:
    return ["poison", "--data", str(data), "--attack", "badnet", "--attack-param", "size=4", "--target", "triangle",
            "--num", "3", "--seed", str(seed), "--out", str(out), *extra]


def test_poison_force_never_deletes_what_its_source_refers_to(tmp_path, capsys):
    from eftclip.attacks.poison import poison_dataset
    from eftclip.data.captions import read_captions

    src = make_pairs(tmp_path / "src", 8)
    p = tmp_path / "P"
    assert main(_poison(src, p, 0)) == 0
    stage1 = p / "stage1.csv"
    shutil.copy(p / "data.csv", stage1)
    referenced = [Path(r.image) for r in read_captions(stage1).records]
    # the reproduction: --out P holds --data P/stage1.csv, so the command line refuses it outright
    err = run_refused(_poison(stage1, p, 1, "--force"), capsys, src.parent, p)
    assert "contains the input --data" in err
    # the library below the command line keeps every image the source refers to as well
    poison_dataset(stage1, "badnet", "triangle", num=3, seed=1, out=p, force=True, progress=False)
    assert all(path.is_file() for path in referenced)


def test_poison_force_ignores_a_stale_manifest_listing_a_source_image(tmp_path, capsys):
    q = tmp_path / "Q"
    (q / "images").mkdir(parents=True)
    victim = q / "images" / "victim.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(victim)
    src = make_pairs(tmp_path / "src", 6)
    with open(src, "a", newline="") as fh:  # the source refers to an image inside --out
        csv.writer(fh).writerow([str(victim), "a photo of a black square"])
    (q / "manifest.json").write_text(json.dumps({"request": {}, "poisoned": [{"image": "images/victim.png"}]}))
    assert main(_poison(src, q, 0, "--force")) == 0
    assert victim.is_file()


def test_world_overwrite_refuses_a_folder_that_never_held_a_world(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("four years of work")
    err = run_refused(["world", "synth", "--out", victim, "--size", "tiny", "--overwrite"], capsys, victim)
    assert "world.json" in err and (victim / "thesis.txt").is_file()
    assert not list(tmp_path.glob(".victim.*"))  # no staging folder left behind


# --------------------------------------------------------------------------- cheap checks first


@pytest.mark.parametrize("n", ["0", "-3"])
def test_detect_and_sweep_counts_are_counts(kit, capsys, n):
    k = kit
    for verb in ("detect", "sweep"):
        argv = [verb, "--checkpoint", k["good"], "--images", k["data"], "--out", k["root"] / f"{verb}{n}",
                "--max-images", n]
        err = run_refused(argv, capsys, k["good"], k["data"].parent)
        assert "--max-images must be at least 1" in err
        assert not (k["root"] / f"{verb}{n}").exists()


def test_evaluate_checks_out_and_device_before_evaluating(kit, capsys, monkeypatch):
    import eftclip.evaluation as evaluation

    def never(*a, **kw):
        raise AssertionError("evaluated before the cheap checks")

    monkeypatch.setattr(evaluation, "evaluate", never)
    base = ["evaluate", "--checkpoint", kit["good"], "--data", kit["eval"], "--quiet"]
    folder = kit["root"] / "reports"
    folder.mkdir(exist_ok=True)
    err = run_refused(base + ["--out", folder], capsys, kit["good"], kit["eval"])
    assert "is a folder" in err
    if not torch.cuda.is_available():  # on a CPU machine: one named line, not a driver traceback
        err = run_refused(base + ["--device", "cuda"], capsys, kit["good"], kit["eval"])
        assert "no usable CUDA device" in err


def test_curate_checks_size_before_scanning_the_pool(kit, capsys, monkeypatch):
    import eftclip.data.captions as captions

    def never(*a, **kw):
        raise AssertionError("the pool was scanned before --size was checked")

    monkeypatch.setattr(captions, "read_captions", never)
    for size in ("0", "-5"):
        err = run_refused(["curate", "--detection", kit["det"], "--pool", kit["data"], "--size", size,
                           "--out", kit["root"] / "cur"], capsys, kit["det"], kit["data"].parent)
        assert "--size must be at least 1" in err


def test_curate_warns_when_k_has_no_affected_labels(kit, tmp_path, capsys):
    det = tmp_path / "det"
    shutil.copytree(kit["det"], det)
    (det / "affected_labels.csv").write_text("label,count,frequency\n")
    before = snapshot(det, kit["data"].parent)
    assert main(["curate", "--detection", str(det), "--pool", str(kit["data"]), "--size", "4",
                 "--out", str(tmp_path / "cur")]) == 0
    err = capsys.readouterr().err
    assert "lists no affected labels though K = ['triangle']" in err and "uniform mix" in err
    assert snapshot(det, kit["data"].parent) == before


@pytest.mark.parametrize("verb,key,value,says", [
    ("train", "epochs", "1.5", "int (a whole number)"),
    ("train", "lr", '"fast"', "float (a finite number)"),
    ("finetune", "lr", ".inf", "float (a finite number)"),
    ("detect", "theta", '"high"', "float (a finite number)"),
])
def test_typed_yaml_values_name_the_key_and_the_file(kit, tmp_path, capsys, verb, key, value, says):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"{key}: {value}\n")
    argv = {"train": ["train", "--data", kit["data"], "--model", "eftclip-tiny-rn"],
            "finetune": ["finetune", "--checkpoint", kit["good"], "--data", kit["data"]],
            "detect": ["detect", "--checkpoint", kit["good"], "--images", kit["data"]]}[verb]
    err = run_refused(argv + ["--config", cfg, "--out", tmp_path / "out"], capsys, cfg, kit["data"].parent)
    assert f"{cfg}: {key}: expected {says}" in err
    assert not (tmp_path / "out").exists()


YAML_VALUES = st.one_of(st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                        st.text(max_size=6), st.none(), st.lists(st.integers(0, 2), max_size=2))


@FAST
@given(key=st.sampled_from(["epochs", "lr", "batch_size", "grad_clip", "device", "resume", "cpu_threads"]),
       value=YAML_VALUES)
def test_any_yaml_value_is_accepted_with_its_type_or_named(key, value):
    from eftclip.config import from_mapping
    from eftclip.training.config import TrainConfig

    try:
        cfg = from_mapping(TrainConfig, {key: value}, source="run.yaml")
    except EftclipError as exc:
        assert str(exc).startswith(f"run.yaml: {key}: expected ")
        return
    got = getattr(cfg, key)
    hint = {"epochs": int, "lr": float, "batch_size": int, "grad_clip": (float, type(None)), "device": str,
            "resume": bool, "cpu_threads": (int, type(None))}[key]
    assert isinstance(got, hint) and not isinstance(got, bool) or hint is bool
    if isinstance(got, float):
        assert math.isfinite(got)


CELL = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@FAST
@given(image=CELL, caption=CELL)
def test_poison_survives_any_csv_cell(tmp_path_factory, image, caption):
    tmp = tmp_path_factory.mktemp("cell")
    src = make_pairs(tmp / "src", 4)
    with open(src, "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow([image, caption])
    before = snapshot(tmp / "src")
    rc = main(["poison", "--data", str(src), "--attack", "badnet", "--target", "triangle", "--num", "1",
               "--out", str(tmp / "out")])
    assert rc in (0, 2)
    assert snapshot(tmp / "src") == before


@FAST
@given(size=st.one_of(st.integers(-4, 40), st.floats(-4, 40), st.just(float("nan")), st.text(max_size=4)),
       position=st.one_of(st.sampled_from(["random", "top-left", "bottom-right", "middle"]), st.text(max_size=4)))
def test_trigger_parameters_are_accepted_or_named(size, position):
    # sizes stay small here: a huge float size is allocated before it is checked against the image
    # (attacks/base.py, reported to the integrator), and a test must not allocate gigabytes
    from eftclip.attacks import create_trigger

    try:
        trigger = create_trigger("badnet", size=size, position=position)
        result = trigger.apply(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0))
    except EftclipError as exc:
        assert "size" in str(exc) or "position" in str(exc) or "px" in str(exc), str(exc)
        return
    assert result.image.shape == (32, 32, 3) and result.image.dtype == np.uint8


# --------------------------------------------------------------------------- resources


def test_a_full_disk_is_one_line(kit, tmp_path, capsys, monkeypatch):
    import eftclip.io as eio

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(eio.os, "replace", full_disk)
    out = tmp_path / "r" / "eval.json"
    err = run_refused(["evaluate", "--checkpoint", kit["good"], "--data", kit["eval"], "--out", out, "--quiet"],
                      capsys, kit["good"], kit["eval"], code=1)
    assert "the disk is full" in err and "eval.json" in err and err.count("\n") == 1
    assert list(out.parent.glob("*")) == []  # the temporary file went with the failure


def test_resource_failures_from_torch_are_named():
    from eftclip.cli.failures import resource_message

    full = RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0")
    assert "often a full disk" in resource_message(full)
    assert "no CUDA support" in resource_message(AssertionError("Torch not compiled with CUDA enabled"))
    assert resource_message(RuntimeError("shape mismatch")) is None  # a bug keeps its traceback


# --------------------------------------------------------------------------- hygiene


def test_committed_metrics_hold_no_absolute_path(tmp_path):
    import os

    from eftclip.io import portable_paths

    assert portable_paths({"root": "/a/b/data", "n": 3, "name": "cifar10", "l": ["/a/x.png"]}, "/a/repo") == \
        {"root": "../b/data", "n": 3, "name": "cifar10", "l": ["../x.png"]}
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    for path in results.glob("*/metrics.json"):
        def walk(obj, where):
            if isinstance(obj, dict):
                for key, value in obj.items():
                    walk(value, f"{where}.{key}")
            elif isinstance(obj, list):
                for i, value in enumerate(obj):
                    walk(value, f"{where}[{i}]")
            elif isinstance(obj, str):
                assert not os.path.isabs(obj), f"{path}: {where} is an absolute path ({obj})"

        walk(json.loads(path.read_text()), "$")
