"""The training loop on a tiny model: loss falls, run files, CleanCLIP terms, resume, bad input."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from training_fixtures import make_pairs, write_eval_folder  # noqa: E402

from eftclip.cli import main as cli_main  # noqa: E402
from eftclip.errors import EftclipError  # noqa: E402
from eftclip.models import read_state_dict  # noqa: E402
from eftclip.training import FinetuneConfig, TrainConfig, finetune, train  # noqa: E402

MODEL = "eftclip-tiny-vit"
FAST = dict(progress=False, cpu_threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"), 64, seed=1)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("pre") / "run"
    train(TrainConfig(data=str(data), model=MODEL, epochs=6, batch_size=16, lr=2e-3, warmup=4, out=str(out), **FAST))
    return out


def _summary(run: Path) -> list[dict]:
    with open(run / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_pretraining_loss_falls_and_writes_run_files(pretrained):
    rows = _summary(pretrained)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert {"lr", "loss", "contrastive", "samples_per_s", "seconds"} <= set(rows[0])
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(float(r["samples_per_s"]) > 0 for r in rows)
    cfg = yaml.safe_load((pretrained / "config.yaml").read_text())
    assert cfg["model"] == MODEL and cfg["batch_size"] == 16 and cfg["kind"] == "train"
    assert (pretrained / "final.safetensors").is_file() and (pretrained / "final.json").is_file()
    ckpts = sorted(p.name for p in (pretrained / "checkpoints").glob("epoch_*.safetensors"))
    assert ckpts == ["epoch_5.safetensors", "epoch_6.safetensors"]  # keep_checkpoints=2
    assert not list(pretrained.rglob("*.tmp*"))
    final = read_state_dict(pretrained / "final.safetensors")
    last = read_state_dict(pretrained / "checkpoints" / "epoch_6.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_finetune_cleanclip_logs_each_term(tmp_path, data, pretrained):
    out = tmp_path / "ft"
    summary = finetune(FinetuneConfig(checkpoint=str(pretrained / "final.safetensors"), data=str(data), epochs=2,
                                      batch_size=16, lr=1e-4, warmup=2, inmodal_weight=0.5, out=str(out), **FAST))
    rows = _summary(out)
    assert len(rows) == 2
    for r in rows:
        expect = float(r["multimodal"]) + 0.5 * float(r["inmodal"])
        assert float(r["loss"]) == pytest.approx(expect, rel=1e-5)
        assert float(r["inmodal"]) == pytest.approx((float(r["inmodal_image"]) + float(r["inmodal_text"])) / 2, rel=1e-5)
    assert summary["model"] == MODEL and summary["steps"] == 8
    before = read_state_dict(pretrained / "final.safetensors")
    after = read_state_dict(out / "final.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_finetune_clip_objective_and_subset(tmp_path, data, pretrained):
    out = tmp_path / "ftclip"
    summary = finetune(FinetuneConfig(checkpoint=str(pretrained / "final.safetensors"), data=str(data), epochs=1,
                                      batch_size=8, objective="clip", subset=24, subset_seed=3, out=str(out), **FAST))
    rows = _summary(out)
    assert "inmodal" not in rows[0] and "contrastive" in rows[0]
    assert summary["pairs"] == 24 and summary["steps"] == 3
    from eftclip.training import load_pairs

    a = load_pairs(FinetuneConfig(checkpoint="x", data=str(data), subset=24, subset_seed=3))
    b = load_pairs(FinetuneConfig(checkpoint="x", data=str(data), subset=24, subset_seed=4))
    assert a.captions == load_pairs(FinetuneConfig(checkpoint="x", data=str(data), subset=24, subset_seed=3)).captions
    assert [r.image for r in a.images] != [r.image for r in b.images]


def test_finetune_lock_text_changes_only_the_image_tower(tmp_path, data, pretrained):
    out = tmp_path / "locked"
    finetune(FinetuneConfig(checkpoint=str(pretrained / "final.safetensors"), data=str(data), epochs=1,
                            batch_size=16, lr=1e-3, warmup=1, lock_text=True, out=str(out), **FAST))
    before = read_state_dict(pretrained / "final.safetensors")
    after = read_state_dict(out / "final.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    text = {k for k in before if k.startswith(("transformer.", "token_embedding", "positional_embedding",
                                                "ln_final", "text_projection"))}
    assert text and not (changed & text), sorted(changed & text)[:5]
    assert any(k.startswith("visual.") for k in changed)


class Kill(Exception):
    pass


def test_resume_after_mid_epoch_kill_equals_unbroken_run(tmp_path, data):
    common = dict(data=str(data), model=MODEL, epochs=2, batch_size=16, lr=2e-3, warmup=2, save_every_steps=2,
                  defense="roclip", roclip_period=2, roclip_pool_size=32, **FAST)
    # RoCLIP exercises every piece of state: augmentation replay, the caption pool, optimiser moments
    whole = tmp_path / "whole"
    train(TrainConfig(out=str(whole), **common))

    broken = tmp_path / "broken"

    def kill_at_step_7(step: int, epoch: int) -> None:
        if step == 7:  # epoch 2, step 3 of 4; last checkpoint: global step 6
            raise Kill()

    with pytest.raises(Kill):
        train(TrainConfig(out=str(broken), **common), on_step_end=kill_at_step_7)
    assert (broken / "checkpoints" / "latest.json").is_file()
    assert not (broken / "final.safetensors").exists()
    with pytest.raises(EftclipError, match="--resume"):
        train(TrainConfig(out=str(broken), **common))
    train(TrainConfig(out=str(broken), resume=True, **common))

    a = read_state_dict(whole / "final.safetensors")
    b = read_state_dict(broken / "final.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the unbroken run"
    ra, rb = _summary(whole), _summary(broken)
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert float(ra[1]["matched_own"]) < 1.0  # epoch 2 was a matching epoch


def test_resume_with_another_config_is_refused(tmp_path, data):
    cfg = dict(data=str(data), model=MODEL, epochs=1, batch_size=32, lr=1e-3, warmup=1, out=str(tmp_path / "r"), **FAST)
    train(TrainConfig(**cfg))
    with pytest.raises(EftclipError, match="another config.*lr"):
        train(TrainConfig(**{**cfg, "lr": 5e-4, "resume": True}))


def test_resume_of_a_run_made_before_a_field_existed(tmp_path, data):
    """A field added since the run was made (absent from its config.yaml) counts as its default."""
    cfg = dict(data=str(data), model=MODEL, epochs=1, batch_size=32, lr=1e-3, warmup=1, out=str(tmp_path / "r"), **FAST)
    train(TrainConfig(**cfg))
    saved = tmp_path / "r" / "config.yaml"
    record = yaml.safe_load(saved.read_text())
    assert record.pop("eda_synonyms") == "auto"
    saved.write_text(yaml.safe_dump(record))
    train(TrainConfig(**{**cfg, "resume": True}))  # accepted: the missing field is its default
    assert len(_summary(tmp_path / "r")) == 1
    with pytest.raises(EftclipError, match="another config.*eda_synonyms: 'auto' -> 'table'"):
        train(TrainConfig(**{**cfg, "resume": True, "eda_synonyms": "table"}))


def test_interrupted_checkpoint_write_leaves_previous_one(tmp_path, data, monkeypatch):
    import safetensors.torch as st

    out = tmp_path / "crash"
    cfg = TrainConfig(data=str(data), model=MODEL, epochs=2, batch_size=32, lr=1e-3, warmup=1, out=str(out), **FAST)
    real = st.save_file
    calls = {"n": 0}

    def flaky(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the epoch-2 checkpoint dies half-way through writing
            with open(filename, "wb") as fh:
                fh.write(b"partial")
            raise KeyboardInterrupt
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["epoch_1.json", "epoch_1.safetensors", "epoch_1.state.pt", "latest.json"]
    read_state_dict(out / "checkpoints" / "epoch_1.safetensors")  # complete and readable
    monkeypatch.setattr(st, "save_file", real)
    train(TrainConfig(**{**cfg.__dict__, "resume": True}))
    assert len(_summary(out)) == 2


def test_bad_inputs_are_clear_errors(tmp_path, data, pretrained):
    base = dict(model=MODEL, out=str(tmp_path / "x"), **FAST)
    with pytest.raises(EftclipError, match="--lr must be > 0"):
        train(TrainConfig(data=str(data), lr=0.0, **base))
    with pytest.raises(EftclipError, match="--batch-size 80.*only 64"):
        train(TrainConfig(data=str(data), batch_size=80, **base))
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    with pytest.raises(EftclipError, match="empty.csv"):
        train(TrainConfig(data=str(empty), **base))
    with pytest.raises(EftclipError, match="no image-caption pairs"):
        train(TrainConfig(records=[], **base))
    with pytest.raises(EftclipError, match="eftclip-tiny-vit.*eftclip-tiny-rn"):
        finetune(FinetuneConfig(checkpoint=str(pretrained / "final.safetensors"), model="eftclip-tiny-rn",
                                data=str(data), out=str(tmp_path / "y"), **FAST))
    with pytest.raises(EftclipError, match="--subset 65"):
        finetune(FinetuneConfig(checkpoint=str(pretrained / "final.safetensors"), data=str(data), subset=65,
                                out=str(tmp_path / "z"), **FAST))


def test_cli_train_and_finetune_end_to_end(tmp_path, data, pretrained, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["train", "--data", str(data), "--model", MODEL, "--epochs", "1", "--batch-size", "32",
                   "--lr", "1e-3", "--warmup", "1", "--out", str(out), "--no-progress", "--cpu-threads", "1"])
    assert rc == 0 and (out / "final.safetensors").is_file()
    assert '"steps": 2' in capsys.readouterr().out
    rc = cli_main(["finetune", "--checkpoint", str(pretrained / "final.safetensors"), "--data", str(data),
                   "--objective", "cleanclip", "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "cft"),
                   "--no-progress", "--cpu-threads", "1", "--clip-weight", "1", "--inmodal-weight", "1"])
    assert rc == 0 and {"multimodal", "inmodal"} <= set(_summary(tmp_path / "cft")[0])
    rc = cli_main(["train", "--data", str(data), "--lr", "0", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "--lr must be > 0" in capsys.readouterr().err


def test_per_epoch_zero_shot_eval_columns(tmp_path, data, pretrained):
    folder = write_eval_folder(tmp_path / "eval", 3)
    out = tmp_path / "ev"
    finetune(FinetuneConfig(checkpoint=str(pretrained / "final.safetensors"), data=str(data), epochs=1, batch_size=32,
                            objective="clip", out=str(out), eval_data=str(folder), eval_classes=_names(tmp_path),
                            eval_templates="simple", eval_attack="badnet", eval_target="triangle", **FAST))
    row = _summary(out)[0]
    assert 0.0 <= float(row["ca_top1"]) <= 1.0 and 0.0 <= float(row["asr"]) <= 1.0
    with pytest.raises(EftclipError, match="--eval-attack and --eval-target"):
        FinetuneConfig(checkpoint="c", data="d", eval_data="x", eval_classes="y", eval_attack="badnet").validate()


def _names(tmp_path: Path) -> str:
    import json

    from training_fixtures import SHAPES

    path = tmp_path / "classes.json"
    path.write_text(json.dumps({s: s for s in SHAPES}))
    return str(path)


@pytest.mark.slow  # two extra process start-ups and a 96-step run twice: about 30 s here
def test_resume_after_sigkill_of_a_real_process(tmp_path, data):
    """A process killed with SIGKILL while it trains and checkpoints every step resumes to the same weights."""
    import json
    import os
    import signal
    import subprocess
    import time

    args = ["--data", str(data), "--model", MODEL, "--epochs", "12", "--batch-size", "16", "--lr", "2e-3",
            "--warmup", "2", "--save-every-steps", "1", "--no-progress", "--cpu-threads", "1", "--device", "cpu"]
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "eftclip", "train", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(latest.read_text())["global_step"] >= 6:
                break
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.safetensors").exists()
    assert cli_main(["train", *args, "--out", str(killed), "--resume"]) == 0
    assert not list((killed / "checkpoints").glob(".*.tmp*"))  # a kill mid-write leaves none behind

    whole = tmp_path / "whole"
    assert cli_main(["train", *args, "--out", str(whole)]) == 0
    a = read_state_dict(whole / "final.safetensors")
    b = read_state_dict(killed / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the unbroken run"


def test_bad_row_fails_by_default_and_is_skipped_on_request(tmp_path, data):
    import json

    bad = tmp_path / "bad.csv"
    lines = data.read_text().splitlines()
    folder = data.parent
    rows = [lines[0]] + [f"{folder / l.split(',', 1)[0]},{l.split(',', 1)[1]}" for l in lines[1:33]]
    rows.insert(5, f"{folder / 'images' / 'missing.png'},a photo of nothing")
    bad.write_text("\n".join(rows) + "\n")
    cfg = dict(data=str(bad), model=MODEL, epochs=1, batch_size=16, out=str(tmp_path / "b"), **FAST)
    with pytest.raises(EftclipError, match=r"bad.csv.*row 5|row 5.*bad.csv"):
        train(TrainConfig(**cfg))
    with pytest.warns(UserWarning, match="missing.png"):
        summary = train(TrainConfig(on_error="skip", **cfg))
    assert summary["pairs"] == 32 and summary["skipped_rows"] == 1
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["skipped_rows"] == 1
