"""benchmarks/gpu.sh: its dry run (every part on the CPU at tiny sizes) and the pieces that turn
figures into the results table (steady rates, goals), so the GPU script cannot rot without a GPU."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_report  # noqa: E402
import train_throughput  # noqa: E402


def _env():
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    # the scripts run from the repository root: make this checkout's eftclip importable there
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ---------------------------------------------------------------- steady rates


def test_open_clip_log_lines_are_parsed_per_step(tmp_path):
    run = tmp_path / "bench"
    run.mkdir()
    line = ("2026-12-01,10:00:00 | INFO | Train Epoch: 0 [ 32/64 (50%)] Data (t): 0.001 "
            "Batch (t): 0.250, {r:#g}/s, {r:#g}/s/gpu LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: 2.7 (2.7)")
    (run / "out.log").write_text("\n".join(["starting", line.format(r=64.0), line.format(r=128.0)]) + "\n")
    assert train_throughput._open_clip_steps(run) == [64.0, 128.0]
    assert train_throughput._open_clip_steps(tmp_path / "missing") == []


def test_reference_steady_rate_leaves_out_the_first_epoch_and_each_epochs_worker_start():
    # 2 epochs x 4 steps of 100 samples/s, each epoch's first step slowed by starting its workers
    steps = [10.0, 100.0, 100.0, 100.0, 20.0, 100.0, 100.0, 100.0]
    epoch_rates, steady = train_throughput._open_clip_rates(steps, epochs=2)
    assert steady == pytest.approx(100.0)
    # an epoch's own rate is its samples over its time (harmonic mean), worker start included
    assert epoch_rates == pytest.approx([4 / (1 / 10 + 3 / 100), 4 / (1 / 20 + 3 / 100)])
    assert math.isnan(train_throughput._open_clip_rates([], epochs=2)[1])


def test_steady_rate_is_samples_over_time_of_the_later_epochs():
    assert train_throughput._steady([5.0, 100.0, 50.0]) == pytest.approx(2 / (1 / 100 + 1 / 50))
    assert train_throughput._steady([80.0]) == pytest.approx(80.0)  # one epoch: that epoch
    assert math.isnan(train_throughput._steady([1.0, float("nan")]))


# ---------------------------------------------------------------- goals and the table


def _train(model, ratio, ref="open_clip_train.main"):
    return {"benchmark": "train_throughput", "model": model, "precision": "bf16", "image_size": 224, "pairs": 4096,
            "batch_size": 256, "device": "cuda", "ratio": ratio,
            "eftclip": {"samples_per_s": 100.0 * ratio}, "reference": {"name": ref, "samples_per_s": 100.0}}


def _detect(name, ips):
    row = {"batch_size": 64, "images": 640, "images_per_s": ips, "finds_per_image": 3.0, "raw_finds_per_image": 9.0}
    return {"benchmark": "detect_throughput", "model": "ViT-B-32", "device": "cuda", "precision": "bf16",
            "backends": {name: {"description": f"{name} at size", "best_images_per_s": ips, "best_batch_size": 64,
                                "rows": [row]}}, "not_measured": {}}


def test_goals_pass_miss_and_not_measured():
    parts = [_train("RN50", 1.25), _train("ViT-B-32", 1.19, ref="open_clip-style loop"), _detect("fastsam", 999.0)]
    rows = {r["goal"]: r for r in gpu_report.goals(parts)}
    rn50 = rows["training RN50 (bf16): eftclip >= 1.2x open_clip_train"]
    vit = rows["training ViT-B-32 (bf16): eftclip >= 1.2x open_clip_train"]
    assert (rn50["status"], rn50["measured"], rn50["note"]) == ("PASS", "1.25x", "")
    assert vit["status"] == "MISS" and "open_clip-style loop" in vit["note"]  # says the reference was not the trainer
    assert rows["detection with FastSAM-s: >= 1,000 images/s"]["status"] == "MISS"
    assert rows["detection with OWLv2-base: >= 400 images/s"]["status"] == "not measured"
    ok = {r["goal"]: r["status"] for r in gpu_report.goals([_detect("fastsam", 1000.0), _detect("owlv2", 400.0)])}
    assert ok["detection with FastSAM-s: >= 1,000 images/s"] == "PASS"
    assert ok["detection with OWLv2-base: >= 400 images/s"] == "PASS"
    assert ok["training: eftclip >= 1.2x open_clip_train"] == "not measured"  # no training part finished
    # a part stopped by its time limit: eftclip's side alone, or the batch sizes that finished
    cut = dict(_train("RN50", float("nan")), complete=False)
    row = gpu_report.goals([cut])[0]
    assert row["status"] == "not measured" and "did not finish" in row["note"]
    early = dict(_detect("owlv2", 500.0), complete=False)
    row = {r["goal"]: r for r in gpu_report.goals([early])}["detection with OWLv2-base: >= 400 images/s"]
    assert row["status"] == "PASS" and "stopped early" in row["note"]
    # the predictor path measured beside the device one: its ratio in the note
    both = _detect("fastsam", 1200.0)
    both["backends"].update(_detect("fastsam-predictor", 300.0)["backends"])
    row = {r["goal"]: r for r in gpu_report.goals([both])}["detection with FastSAM-s: >= 1,000 images/s"]
    assert row["status"] == "PASS" and "4.00x the fastsam-predictor at size (300.0 images/s)" in row["note"]


def test_report_writes_json_and_markdown_naming_every_goal(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "train-RN50.json").write_text(json.dumps(_train("RN50", 1.5)))
    (tmp_path / "parts" / "detect-owlv2.json").write_text(json.dumps(_detect("owlv2", 420.0)))
    (tmp_path / "parts.tsv").write_text("train RN50\t0\t61\t100\tpython x\ndetect fastsam\t124\t90\t90\tpython y\n")
    result = gpu_report.report(tmp_path, dry_run=False)
    assert json.loads((tmp_path / "results.json").read_text())["goals"] == result["goals"]
    md = (tmp_path / "results.md").read_text()
    assert "Machine: not recorded" in md and "DRY RUN" not in md
    assert "| training RN50 (bf16): eftclip >= 1.2x open_clip_train | 1.50x | PASS |" in md
    assert "| detection with OWLv2-base: >= 400 images/s | 420.0 images/s (batch 64) | PASS |" in md
    assert "| detection with FastSAM-s: >= 1,000 images/s | not measured | not measured |" in md
    assert "| detect fastsam | 124 (time limit) | 90 | 90 |" in md and "    python y" in md


# ---------------------------------------------------------------- the script itself


def test_without_cuda_and_without_dry_run_it_stops_with_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), str(tmp_path / "out")], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "torch sees no CUDA device" in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "parts.tsv").exists()  # stopped before any part


# in the default run, so that gpu.sh cannot rot while no GPU is at hand: about 85 s on 2 cores (seven Python
# start-ups: two trainers per model, the two detection parts)
def test_dry_run_measures_every_part(tmp_path):
    out = tmp_path / "dry"
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--dry-run", str(out)], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["dry_run"] is True and result["machine"]["torch"]
    runs = result["part_runs"]
    assert [r["part"] for r in runs] == ["data", "train eftclip-tiny-rn", "train eftclip-tiny-vit",
                                         "detect fastsam", "detect owlv2"]
    assert all(r["rc"] == 0 for r in runs), runs

    def good(x):
        return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

    trains = [p for p in result["parts"] if p["benchmark"] == "train_throughput"]
    assert sorted(p["model"] for p in trains) == ["eftclip-tiny-rn", "eftclip-tiny-vit"]
    for p in trains:
        assert good(p["eftclip"]["samples_per_s"]) and good(p["reference"]["samples_per_s"]) and good(p["ratio"])
        assert p["image_size"] == 48 and p["pairs"] == 48  # the data were made at 48 px (the JPEG path)
    detect_parts = [p for p in result["parts"] if p["benchmark"] == "detect_throughput"]
    assert [p["seconds"] for p in detect_parts] == [0.5, 0.5]  # the dry run's timing, not bash's $SECONDS
    dets = {name: b for p in detect_parts for name, b in p["backends"].items()}
    failed = {name: why for p in result["parts"] if p["benchmark"] == "detect_throughput"
              for name, why in p["not_measured"].items()}
    have_ultralytics = importlib.util.find_spec("ultralytics") is not None
    buildable = {"fastsam": have_ultralytics, "fastsam-predictor": have_ultralytics,
                 "owlv2": importlib.util.find_spec("transformers") is not None}
    if have_ultralytics:  # the device path on the CPU, beside the predictor it replaces
        assert "on the device" in dets["fastsam"]["description"]
        assert "predictor" in dets["fastsam-predictor"]["description"]
    for name, can in buildable.items():
        if can:
            assert name in dets, failed.get(name)
            assert good(dets[name]["best_images_per_s"])
            assert all(good(r["images_per_s"]) and r["images"] > 0 for r in dets[name]["rows"])
            assert [r["batch_size"] for r in dets[name]["rows"]] == [1, 4]
        else:
            assert name in failed
    md = (out / "results.md").read_text()
    assert "DRY RUN" in md
    for goal in ("eftclip >= 1.2x open_clip_train", "FastSAM-s: >= 1,000 images/s", "OWLv2-base: >= 400 images/s"):
        assert goal in md
    for g in result["goals"]:
        if "FastSAM" in g["goal"] and not buildable["fastsam"] or "OWLv2" in g["goal"] and not buildable["owlv2"]:
            continue
        assert g["status"] in ("PASS", "MISS"), g
        if "FastSAM" in g["goal"]:
            assert "x the FastSAM-tiny" in g["note"], g  # the ratio to the predictor path
