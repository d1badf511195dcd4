"""Verdict rules (bnjax.run.claims): seed-by-seed decisions, the interval over seeds, per-dataset expectations and
the four verdict words, checked against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bnjax.run.claims import (
    DIFFERS,
    FAIL,
    INCONCLUSIVE,
    PASS,
    Claim,
    Expect,
    Finding,
    dataset_of,
    every,
    every_seed,
    exceeds,
    expectations,
    falls_below,
    interval,
    mean_above,
    paired,
    within,
)
from bnjax.run.results import StudyResults, VariantResult


def test_interval_is_mean_and_two_standard_errors():
    m, half = interval([0.30, 0.35, 0.40, np.nan])  # NaN (a diverged member) is left out
    assert m == pytest.approx(0.35)
    assert half == pytest.approx(2 * 0.05 / np.sqrt(3))  # sample std 0.05 (ddof=1)
    assert interval([0.2]) == (0.2, 0.0)
    assert all(np.isnan(interval([np.nan])))


@pytest.mark.parametrize("values, threshold, holds", [
    ([0.30, 0.35, 0.40], 0.25, True),    # every seed above, mean - 2se = 0.292 > 0.25
    ([0.30, 0.35, 0.40], 0.30, None),    # a seed at the threshold and mean - 2se < 0.30 < mean + 2se = 0.408
    ([0.30, 0.35, 0.40], 0.41, False),   # no seed above
    ([0.05, 0.06, 0.30], 0.0, None),     # every seed above, but mean - 2se = -0.027: too spread to call
    ([-0.10, -0.10, 0.01], 0.0, None),   # one seed above, mean + 2se = +0.010 straddles
    ([-0.10, -0.11, -0.09, 0.005], 0.0, False),  # one seed above, yet mean + 2se = -0.021 <= 0: contradicted
    ([0.0, -0.011, -0.102], 0.0, False),  # no seed above (a tie is not a lead)
    ([0.2], 0.1, True),                  # one seed: its value decides
])
def test_exceeds_against_hand_computed_intervals(values, threshold, holds):
    assert exceeds(values, threshold).holds is holds
    # falls_below is the mirror image
    assert falls_below(-np.asarray(values), -threshold).holds is holds


def test_mean_above_and_within_judge_the_mean_not_the_extreme_member():
    # The unbiased-variance hair trigger: one member changes by 0.011 (> 0.01), the mean change is +0.002.
    d = [0.011, -0.007, 0.003, 0.001, 0.004, -0.002, 0.0, 0.006, 0.002]
    assert within(d, 0.01).holds is True
    assert within(np.asarray(d) + 0.05, 0.01).holds is False  # wholly outside
    assert within([0.0, 0.02], 0.01).holds is None  # mean 0.01 ± 0.02: straddles
    assert within([1.02, 0.98, 1.01], 0.1, center=1.0).holds is True
    gains = [-0.0023, -0.0034, 0.0085]  # recomputed vs EMA 0.9: agree within noise
    assert mean_above(gains, -0.02).holds is True
    assert exceeds(gains, -0.0).holds is None  # "every seed must beat it" would be a coin flip here
    assert mean_above([-0.05, -0.04, -0.06], -0.02).holds is False


def test_every_and_every_seed():
    t, f, u = Finding(True, "t"), Finding(False, "f"), Finding(None, "u")
    assert every([t, t]).holds is True
    assert every([t, u]).holds is None
    assert every([t, u, f]).holds is False  # one contradicted part contradicts "at every epoch"
    assert every([t, f], summary="s").summary == "s"
    assert every_seed([True, True]).holds is True
    assert every_seed([False, False]).holds is False
    assert every_seed([True, False]).holds is None
    with pytest.raises(ValueError, match="at least one finding"):
        every([])


def test_verdict_words_and_differs_wording():
    why = "running variance starts at 1 and lags in epoch 1"
    exp = Expect(differs="CIFAR-10", why=why)
    c = Claim.decide("BN leads at every epoch", Finding(False, "lead -0.10"), exp, source="MNIST-1D table")
    assert (c.verdict, c.label, c.note, c.passed) == (DIFFERS, "DIFFERS (from CIFAR-10, as measured)", why, False)
    assert c.evidence == "lead -0.10 (MNIST-1D table)"
    # The same contradiction on a dataset expected to follow the source is a FAIL.
    assert Claim.decide("x", Finding(False, "n"), Expect()).verdict == FAIL
    # Holding where a difference was expected is a PASS, with a note saying so.
    c = Claim.decide("x", Finding(True, "n"), exp)
    assert c.verdict == PASS and "expected to differ from CIFAR-10" in c.note
    c = Claim.decide("x", Finding(None, "n"), exp, evidence="more")
    assert (c.verdict, c.evidence) == (INCONCLUSIVE, "n; more") and "inside the spread" in c.note
    assert Claim("x", True, "n").verdict == PASS and Claim("x", np.bool_(False), "n").verdict == FAIL
    with pytest.raises(ValueError, match="not one of PASS, FAIL, DIFFERS, INCONCLUSIVE"):
        Claim("x", "OK", "n")
    with pytest.raises(ValueError, match="needs versus="):
        Claim("x", DIFFERS, "n")
    with pytest.raises(ValueError, match=r"needs why="):
        Expect(differs="CIFAR-10")


TABLE = {
    "default": {"gap": Expect(0.0), "lead": Expect(0.0)},
    "mnist1d": {"gap": Expect(0.30), "lead": Expect(differs="CIFAR-10", why="w")},
    "fashion_mnist": {"gap": Expect(0.02)},
}


def test_per_dataset_thresholds():
    m, f, c = (expectations(TABLE, d) for d in ("mnist1d", "fashion_mnist", "cifar10"))
    assert (m["gap"].threshold, f["gap"].threshold, c["gap"].threshold) == (0.30, 0.02, 0.0)
    assert m["lead"].differs == "CIFAR-10" and f["lead"].differs is None  # Fashion-MNIST falls back to the default
    assert (m.source("gap"), f.source("lead"), c.source("gap")) == ("MNIST-1D table", "default", "default")
    # One set of per-seed gaps, three datasets: the MNIST-1D magnitude is not applied to Fashion-MNIST.
    gaps = [0.08, 0.10, 0.09]
    verdicts = [Claim.decide("BN ahead", exceeds(gaps, e["gap"].threshold), e["gap"]).verdict for e in (m, f, c)]
    assert verdicts == [FAIL, PASS, PASS]
    with pytest.raises(KeyError, match="no expectation 'zz' for dataset 'mnist1d'"):
        m["zz"]


def _variant(name, seeds, values, dataset="mnist1d"):
    k = len(seeds)
    return VariantResult(name=name, members=[{"seed": s} for s in seeds], axes=(),
                         history={"val_acc": np.asarray(values, float)[:, None]}, loss_history=np.zeros((k, 0)),
                         diverged_step=np.full(k, -1), spec={"data": {"name": dataset}})


def test_paired_matches_members_by_seed():
    a = _variant("a", [0, 1, 2], [0.5, 0.6, 0.7])
    b = _variant("b", [2, 0, 1], [0.1, 0.2, 0.3])  # another member order
    np.testing.assert_allclose(paired(a, a.final("val_acc"), b, b.final("val_acc")), [0.3, 0.3, 0.6])
    c = _variant("c", [5, 6], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"share no seed"):
        paired(a, a.final("val_acc"), c, c.final("val_acc"))
    with pytest.raises(ValueError, match=r"2 values for 3 members of 'a'"):
        paired(a, [0.1, 0.2], b, b.final("val_acc"))


def test_dataset_of_reads_the_variants_data():
    res = StudyResults(run_dir=".", config=None, variants={"a": _variant("a", [0], [0.1]),
                                                            "b": _variant("b", [0], [0.1])})
    assert dataset_of(res) == "mnist1d"
    res.variants["b"] = _variant("b", [0], [0.1], dataset="fashion_mnist")
    with pytest.raises(ValueError, match=r"per-dataset claims need one dataset per run"):
        dataset_of(res)
