"""`run_sweep`: triggers re-applied per (rho, mu), one model pass each, theta/tau from stored scores."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from eftclip.detection.sweep import SweepConfig, run_sweep
from eftclip.errors import EftclipError
from test_detection_runner import COLOURS, VOCAB, _oracle  # noqa: F401  (shared real parts)


@pytest.fixture(scope="module")
def bundle():
    import eftclip.models as models

    return models.create_model("eftclip-tiny-vit", seed=0)


@pytest.fixture()
def clean(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "clean"
    d.mkdir()
    for i in range(6):
        im = np.full((32, 32, 3), 128, np.uint8)
        x, y = rng.integers(4, 14, size=2)
        im[y : y + 10, x : x + 10] = list(COLOURS.values())[i % 4]
        Image.fromarray(im).save(d / f"{i}.png")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return d, vocab, tmp_path


def test_sweep_one_model_pass_per_patch_setting(clean, bundle):
    d, vocab, tmp = clean
    cfg = SweepConfig(checkpoint="(given)", images=str(d), out=str(tmp / "sw"), vocab=str(vocab), target="umbrella",
                      rhos=(4, 8), mus=("top-left", "random"), thetas=(0.3, 0.6), taus=(2, 3), min_count=2,
                      batch_size=4)
    oracle = _oracle()
    rows = run_sweep(cfg, oracle=oracle, bundle=bundle)
    assert len(rows) == 2 * 2 * 2 * 2
    # 6 clean images once, plus 6 triggered copies per (rho, mu): theta and tau cost nothing
    assert oracle.seen == 6 + 4 * 6
    for r in rows:
        assert r["n_poisoned"] == 6 and r["n_clean"] == 6
        assert r["detection_rate"] is None or 0.0 <= r["detection_rate"] <= 1.0
    with open(tmp / "sw" / "sweep.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 16
    assert (tmp / "sw" / "figure3.png").stat().st_size > 1000
    assert (tmp / "sw" / "figure4.png").stat().st_size > 1000
    # the triggered copies really carry the patch: a top-left 4 px patch differs from the clean image there
    again = _oracle()
    rows2 = run_sweep(cfg, oracle=again, bundle=bundle)
    assert again.seen == 0 and [r["detection_rate"] for r in rows2] == [r["detection_rate"] for r in rows]


def test_sweep_bad_values(clean, bundle):
    d, vocab, tmp = clean
    base = dict(checkpoint="x", images=str(d), out=str(tmp / "o"), vocab=str(vocab))
    with pytest.raises(EftclipError, match="--theta"):
        run_sweep(SweepConfig(**base, thetas=(0.5, 1.5), taus=(2,)), oracle=_oracle(), bundle=bundle)
    with pytest.raises(EftclipError, match="larger than the vocabulary"):
        run_sweep(SweepConfig(**base, taus=(5, 9)), oracle=_oracle(), bundle=bundle)
    with pytest.raises(EftclipError, match="larger than the 32x32"):
        run_sweep(SweepConfig(**base, rhos=(40,), mus=("top-left",), taus=(2,)), oracle=_oracle(), bundle=bundle)
