"""Training stages as one torchrun job (``train_procs``): the command, its failures, the settings it
never changes, and (slow) a tiny experiment whose 2-process run matches the 1-process one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eftclip.cli import build_parser
from eftclip.cli.study import run_flags
from eftclip.config import from_mapping, load_yaml, write_config
from eftclip.errors import EftclipError
from eftclip.pipeline import torchrun
from eftclip.pipeline.experiment import run_experiment
from eftclip.pipeline.presets import config_from_mapping
from eftclip.training import FinetuneConfig, TrainConfig
from test_pipeline_experiment import TINY as PIPELINE_TINY

# the tiny world of the pipeline tests, with one defense
TINY = {**PIPELINE_TINY, "defenses": [{"name": "cleanclip", "set": "random"}]}


def _cfg(tmp_path, name: str, **changes):
    return config_from_mapping({**TINY, "out": str(tmp_path / name), "cache": str(tmp_path / name / "cache"),
                                **changes})


# --------------------------------------------------------------------------- fast: the pieces


def test_command_and_environment():
    argv = torchrun.command("finetune", Path("/x/torchrun/config.yaml"), 4)
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                    "-m", "eftclip", "finetune", "--config", "/x/torchrun/config.yaml"]
    env = torchrun.child_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                              "MASTER_PORT": "1", "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"}


def test_job_config_holds_the_per_process_batch_and_reads_back(tmp_path):
    cfg = TrainConfig(data="pairs.csv", model="eftclip-tiny-vit", out=str(tmp_path / "run"), batch_size=32, seed=3)
    job = torchrun.per_process(cfg, 2)
    path = torchrun.write_job_config(job, tmp_path)
    assert path == tmp_path / "torchrun" / "config.yaml"
    back = from_mapping(TrainConfig, load_yaml(path))
    assert back == job and back.batch_size == 16
    with pytest.raises(EftclipError, match=r"batch_size 32 does not split evenly over train_procs 3"):
        torchrun.per_process(cfg, 3)


def test_a_failing_job_names_the_folder_the_command_and_its_stderr(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('out line'); sys.stderr.write('rank 0: boom\\n'); sys.exit(3)"]
    with pytest.raises(EftclipError) as info:
        torchrun.run_job(argv, tmp_path)
    text = str(info.value)
    assert str(tmp_path) in text and "exit code 3" in text and "rank 0: boom" in text and " ".join(argv) in text
    assert (tmp_path / "torchrun" / "stdout.txt").read_text() == "out line\n"


def test_a_job_s_stderr_is_echoed_and_kept(tmp_path):
    import io

    echo = io.StringIO()
    torchrun.run_job([sys.executable, "-c", "import sys; sys.stderr.write('bar 50%\\rbar 100%\\n')"], tmp_path,
                     echo=echo)
    assert echo.getvalue() == "bar 50%\rbar 100%\n" == (tmp_path / "torchrun" / "stderr.txt").read_bytes().decode()


def test_resuming_with_another_split_names_the_setting(tmp_path):
    run = tmp_path / "run"
    write_config(run / "config.yaml", {"batch_size": 4, "kind": "finetune"})
    cfg = FinetuneConfig(checkpoint="m.safetensors", data="d.csv", out=str(run), batch_size=8, resume=True)
    torchrun.check_resume_split(cfg, 2)  # the same split: fine
    with pytest.raises(EftclipError, match=r"batch_size 4 per process \(train_procs 2\).*not train_procs 1"):
        torchrun.check_resume_split(cfg, 1)


def test_train_procs_keys_the_training_stages_apart(tmp_path):
    one = {s["id"]: s for s in run_experiment(_cfg(tmp_path, "a"), plan_only=True)["plan"]}
    two = {s["id"]: s for s in run_experiment(_cfg(tmp_path, "a", train_procs=2), plan_only=True)["plan"]}
    # N processes give close, not equal, numbers (BatchNorm per rank): the training stages, and what reads
    # them, are cached apart; the data, the oracle and the poisoning are shared
    for sid in ("s0/train_clean", "s0/badnet/train_poisoned", "s0/badnet/finetune_cleanclip"):
        assert one[sid]["key"] != two[sid]["key"] and two[sid]["params"]["procs"] == 2 and "procs" not in one[sid]["params"]
    for sid in ("s0/data", "s0/oracle", "s0/badnet/trigger", "s0/badnet/poison"):
        assert one[sid]["key"] == two[sid]["key"]
    with pytest.raises(EftclipError, match=r"finetune.batch_size 8 does not split evenly over train_procs 3"):
        run_experiment(_cfg(tmp_path, "b", train_procs=3, pretrain={**TINY["pretrain"], "batch_size": 33 * 3}),
                       plan_only=True)
    args = build_parser().parse_args(["study", "--config", "demo", "--train-procs", "2", "--workers", "1"])
    assert run_flags(args)["train_procs"] == 2


# --------------------------------------------------------------------------- slow: the same experiment


# --------------------------------------------------------------------------- slow: the same experiment

TRAINING = ("s0/train_clean", "s0/badnet/train_poisoned", "s0/badnet/finetune_cleanclip")


def _stage(plan: list[dict], stage_id: str) -> tuple[Path, dict]:
    from eftclip.pipeline.plan import stage_result

    folder = Path(next(s["folder"] for s in plan if s["id"] == stage_id))
    return folder, stage_result(folder)


def _losses(run: Path) -> list[float]:
    import csv

    with open(run / "summary.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def _norm(weights: dict) -> float:
    """The L2 norm of all tensors of a state dict together."""
    return float(sum(float((w.double() ** 2).sum()) for w in weights.values()) ** 0.5)


@pytest.mark.slow
def test_two_process_training_stages_match_one_process(tmp_path):
    """~2 min on 2 busy cores (each torchrun job starts two interpreters).  The ViT has no BatchNorm: with
    the world's ResNet each rank normalises over its own half of the batch (open_clip's trainer without
    --use-bn-sync), and the numbers differ by more than float noise (see docs/contracts.md)."""
    from eftclip.models import create_model, read_state_dict

    vit = {"pretrain": {**TINY["pretrain"], "model": "eftclip-tiny-vit"}}
    cfgs = {procs: _cfg(tmp_path, f"p{procs}", train_procs=procs, **vit) for procs in (1, 2)}
    metrics = {procs: run_experiment(cfg) for procs, cfg in cfgs.items()}
    plans = {procs: run_experiment(cfg, plan_only=True)["plan"] for procs, cfg in cfgs.items()}
    # what each training stage started from: the seeded initialisation, or the poisoned model
    starts = {"s0/train_clean": lambda: create_model("eftclip-tiny-vit", seed=0).model.state_dict(),
              "s0/badnet/train_poisoned": lambda: create_model("eftclip-tiny-vit", seed=0).model.state_dict(),
              "s0/badnet/finetune_cleanclip": lambda: read_state_dict(
                  _stage(plans[1], "s0/badnet/train_poisoned")[1]["checkpoint"])}
    for stage_id in TRAINING:
        (f1, r1), (f2, r2) = _stage(plans[1], stage_id), _stage(plans[2], stage_id)
        assert not (f1 / "torchrun").exists() and (f2 / "torchrun" / "stderr.txt").exists()
        run1, run2 = Path(r1["summary"]["out"]), Path(r2["summary"]["out"])
        # the job really ran as two ranks of half the batch each, and reports what an in-process stage does
        assert (r1["summary"]["world_size"], r2["summary"]["world_size"]) == (1, 2)
        assert load_yaml(run2 / "config.yaml")["batch_size"] * 2 == load_yaml(run1 / "config.yaml")["batch_size"]
        assert set(r1) == set(r2) and set(r1["summary"]) == set(r2["summary"])
        assert r1["summary"]["steps"] == r2["summary"]["steps"]
        # the same global batch, the same numbers: losses to the distributed training test's rel 1e-4 (seen: 1e-6)
        assert _losses(run1) == pytest.approx(_losses(run2), rel=1e-4)
        # weights to 1e-4 of their norm (seen: 1.5e-5) while training moved them by over 1e-3 of it (seen: 0.086
        # pre-training, 0.016 the one fine-tuning step);
        # not element by element: Adam's lr*m/sqrt(v) turns the rounding of a near-zero gradient into a step of
        # up to lr (5e-3), and a handful of the 3.4M weights differ by up to 6e-4
        a, b = read_state_dict(r1["checkpoint"]), read_state_dict(r2["checkpoint"])
        start = starts[stage_id]()
        norm = _norm(a)
        assert _norm({k: a[k] - b[k] for k in a}) < 1e-4 * norm, stage_id
        assert _norm({k: a[k] - start[k] for k in a}) > 1e-3 * norm, stage_id
    # what follows from equal models: the same detection, and CA/ASR within one image of the eval set (these
    # 2-epoch models are near chance, so this is the weaker check; the weights above are the strong one)
    (c1,), (c2,) = metrics[1]["cells"], metrics[2]["cells"]
    assert c1["detection"]["triggers"] == c2["detection"]["triggers"]
    n = _stage(plans[1], "s0/badnet/evaluate_poisoned")[1]["n"]
    for m1, m2 in ((c1["clean"], c2["clean"]), (c1["poisoned"], c2["poisoned"]),
                   (c1["defenses"]["cleanclip"], c2["defenses"]["cleanclip"])):
        assert abs(m1["ca"] - m2["ca"]) <= 1 / n and abs(m1["asr"] - m2["asr"]) <= 1 / n
