"""Curation: label weights, quotas and the seeded draw from a pool."""

from __future__ import annotations

import numpy as np
import pytest

from eftclip.curation import label_weights, quotas, read_affected_labels, select
from eftclip.errors import EftclipError


def test_weights_follow_frequency_and_R():
    affected = {"dog": 60, "cat": 30, "boat": 10}
    w = label_weights(affected, ["dog", "cat", "boat", "tree", "sky"], 0.5)
    assert w["dog"] == pytest.approx(0.6) and w["cat"] == pytest.approx(0.3)
    # unaffected: R times the least frequent affected share (0.1)
    assert w["tree"] == pytest.approx(0.05) and w["sky"] == pytest.approx(0.05)
    assert label_weights(affected, ["tree"], 0.0)["tree"] == 0.0
    # nothing affected: uniform
    assert set(label_weights({}, ["a", "b"], 0.3).values()) == {1.0}
    with pytest.raises(EftclipError, match="unaffected-ratio"):
        label_weights(affected, [], 1.5)


def test_quotas_sum_exactly():
    q = quotas({"a": 0.6, "b": 0.3, "c": 0.1, "d": 0.0}, 7)
    assert sum(q.values()) == 7 and q["d"] == 0
    assert q["a"] >= q["b"] >= q["c"]
    assert quotas({"a": 1, "b": 1, "c": 1}, 100) == {"a": 34, "b": 33, "c": 33}


def _pool(rng, n_per=200, labels=("dog", "cat", "boat", "tree", "sky")):
    items = []
    for lab in labels:
        for _ in range(n_per):
            extra = {str(rng.choice(labels))} if rng.random() < 0.3 else set()
            items.append({lab} | extra)
    items += [set() for _ in range(50)]  # captions naming no vocabulary word
    return items


def test_select_shares_follow_profile_and_R():
    rng = np.random.default_rng(0)
    items = _pool(rng)
    w = label_weights({"dog": 60, "cat": 30, "boat": 10}, ["dog", "cat", "boat", "tree", "sky"], 0.5)
    picks, assigned, rep = select(items, w, 300, np.random.default_rng(1))
    assert len(picks) == 300 and len(set(picks)) == 300
    total_w = sum(w.values())
    for lab in w:
        assert rep[lab]["drawn"] == round(300 * w[lab] / total_w) or abs(rep[lab]["drawn"] - 300 * w[lab] / total_w) < 1
        assert all(lab in items[i] for i, a in zip(picks, assigned) if a == lab)
    # every unaffected label gets at most R x the least frequent affected label's share
    assert rep["tree"]["drawn"] <= 0.5 * rep["boat"]["drawn"] + 1
    assert rep["dog"]["drawn"] > rep["cat"]["drawn"] > rep["boat"]["drawn"] > rep["tree"]["drawn"]
    assert rep["_fill"]["drawn"] == 0


def test_select_is_seeded():
    items = _pool(np.random.default_rng(0))
    w = {"dog": 0.5, "cat": 0.5}
    a = select(items, w, 100, np.random.default_rng(5))[0]
    b = select(items, w, 100, np.random.default_rng(5))[0]
    c = select(items, w, 100, np.random.default_rng(6))[0]
    assert a == b and a != c


def test_shortfall_is_redistributed_and_reported():
    items = [{"dog"}] * 5 + [{"cat"}] * 100 + [{"boat"}] * 100 + [set()] * 10
    items = [set(s) for s in items]
    w = {"dog": 0.5, "cat": 0.3, "boat": 0.2}
    picks, assigned, rep = select(items, w, 100, np.random.default_rng(0))
    assert rep["dog"]["quota"] == 50 and rep["dog"]["drawn"] == 5 and rep["dog"]["shortfall"] == 45
    # the 45 missing go to cat and boat by weight 3:2
    assert rep["cat"]["drawn"] == 30 + 27 and rep["boat"]["drawn"] == 20 + 18
    assert len(picks) == 100 and rep["_fill"]["drawn"] == 0


def test_fill_from_unlabelled_when_labels_run_dry():
    items = [{"dog"}] * 3 + [set()] * 20
    items = [set(s) for s in items]
    picks, assigned, rep = select(items, {"dog": 1.0}, 10, np.random.default_rng(0))
    assert rep["dog"]["drawn"] == 3 and rep["_fill"]["drawn"] == 7 and assigned.count(None) == 7


def test_too_large_size_is_an_error():
    with pytest.raises(EftclipError, match="larger than the pool"):
        select([{"a"}] * 3, {"a": 1.0}, 4, np.random.default_rng(0))


def test_read_affected_labels(tmp_path):
    p = tmp_path / "affected_labels.csv"
    p.write_text("label,count,frequency\ndog,3,0.75\ncat,1,0.25\n")
    assert read_affected_labels(p) == {"dog": 3, "cat": 1}
    p.write_text("label,count,frequency\ndog,x,0.75\n")
    with pytest.raises(EftclipError, match="row 2"):
        read_affected_labels(p)
    with pytest.raises(EftclipError, match="not found"):
        read_affected_labels(tmp_path / "nope.csv")
