"""Precision: bf16 autocast on a CPU that does bf16 natively, fp32 otherwise; what a run used is recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from training_fixtures import make_pairs  # noqa: E402

from eftclip.training import TrainConfig, train  # noqa: E402
from eftclip.precision import autocast_for, cpu_has_bf16, resolve_precision  # noqa: E402

CPU = torch.device("cpu")


def test_cpu_precision_rules():
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision("fp32", CPU) == "fp32"
    with pytest.warns(UserWarning, match="fp16: half precision is for GPUs"):
        assert resolve_precision("fp16", CPU) == "fp32"
    if cpu_has_bf16():
        assert resolve_precision("bf16", CPU) == "bf16"
    else:
        with pytest.warns(UserWarning, match="no native bf16"):
            assert resolve_precision("bf16", CPU) == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("fp16", "cuda") == "fp16"


def test_autocast_for_bf16_runs_matmuls_in_bf16_and_fp32_leaves_them():
    a = torch.randn(4, 8)
    with autocast_for("bf16", CPU)():
        assert (a @ a.T).dtype == torch.bfloat16
    with autocast_for("fp32", CPU)():
        assert (a @ a.T).dtype == torch.float32


def test_unknown_precision_is_refused_naming_the_flag(tmp_path):
    from eftclip.errors import EftclipError

    cfg = TrainConfig(data=str(tmp_path / "x.csv"), model="eftclip-tiny-vit", out=str(tmp_path / "o"), precision="fp8")
    with pytest.raises(EftclipError, match="--precision: unknown 'fp8'"):
        cfg.validate()


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_training_on_cpu_records_its_precision_and_learns(tmp_path):
    data = make_pairs(tmp_path / "pairs", 64, seed=1)
    runs = {}
    for prec in ("fp32", "bf16"):
        runs[prec] = train(TrainConfig(data=str(data), model="eftclip-tiny-vit", epochs=3, batch_size=16, lr=2e-3,
                                       warmup=2, out=str(tmp_path / prec), precision=prec, progress=False,
                                       cpu_threads=1))
    assert runs["bf16"]["precision"] == "bf16" and runs["fp32"]["precision"] == "fp32"
    # bf16 changes the arithmetic, not what is learnt: the losses agree to a few percent
    lb, lf = runs["bf16"]["last_epoch"]["loss"], runs["fp32"]["last_epoch"]["loss"]
    assert lb != lf and abs(lb - lf) < 0.05 * lf


def test_channels_last_trains_the_same_model_to_the_last_bits_and_saves_plain_weights(tmp_path):
    from eftclip.models import load_checkpoint

    data = make_pairs(tmp_path / "pairs", 64, seed=1)
    runs = {}
    for cl in (False, True):
        runs[cl] = train(TrainConfig(data=str(data), model="eftclip-tiny-rn", epochs=2, batch_size=16, lr=2e-3,
                                     warmup=2, out=str(tmp_path / f"cl{cl}"), channels_last=cl, progress=False,
                                     cpu_threads=1))
    la, lb = runs[False]["last_epoch"]["loss"], runs[True]["last_epoch"]["loss"]
    assert la == pytest.approx(lb, rel=1e-3)
    # the checkpoint holds ordinary contiguous tensors, loadable by anyone
    a = load_checkpoint(runs[False]["final_checkpoint"]).model.state_dict()
    b = load_checkpoint(runs[True]["final_checkpoint"]).model.state_dict()
    assert all(v.is_contiguous() for v in b.values())
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-2
