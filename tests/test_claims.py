"""Verdict rules (bnjax.claims): seed-by-seed decisions, the interval over seeds, per-dataset expectations and
the four verdict words, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnjax.claims import (
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
    seeds_to_decide,
    within,
)
from bnjax.run.results import StudyResults, VariantResult


T2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (3 seeds)


def test_interval_is_the_95_percent_confidence_interval_of_the_mean():
    m, half = interval([0.30, 0.35, 0.40, np.nan])  # NaN (a diverged member) is left out
    assert m == pytest.approx(0.35)
    assert half == pytest.approx(T2 * 0.05 / np.sqrt(3))  # sample std 0.05 (ddof=1): 0.1242
    assert interval([0.2]) == (0.2, 0.0)
    assert all(np.isnan(interval([np.nan])))


@pytest.mark.parametrize("values, threshold, holds", [
    ([0.30, 0.35, 0.40], 0.20, True),    # every seed above, interval 0.226..0.474 above
    ([0.30, 0.35, 0.40], 0.25, None),    # every seed above, but the interval reaches down to 0.226
    ([0.30, 0.35, 0.40], 0.48, False),   # the interval lies below
    ([0.05, 0.06, 0.30], 0.0, None),     # every seed above, interval -0.215..0.488: too spread to call
    ([-0.10, -0.10, 0.01], 0.0, None),   # interval -0.221..0.094 straddles
    ([-0.089, -0.099, -0.102], 0.0, False),  # interval -0.114..-0.080
    ([0.0, -0.011, -0.102], 0.0, None),  # no seed leads, yet the interval reaches +0.101: a tie is no evidence
    ([0.2], 0.1, True),                  # one seed: its value decides
])
def test_exceeds_against_hand_computed_intervals(values, threshold, holds):
    assert exceeds(values, threshold).holds is holds
    # falls_below is the mirror image
    assert falls_below(-np.asarray(values), -threshold).holds is holds


def test_mean_above_and_within_judge_the_mean_not_the_extreme_member():
    # The unbiased-variance hair trigger: one member changes by 0.011 (> 0.01), the mean change is +0.002
    # (interval -0.002..+0.006).
    d = [0.011, -0.007, 0.003, 0.001, 0.004, -0.002, 0.0, 0.006, 0.002]
    assert within(d, 0.01).holds is True
    assert within(np.asarray(d) + 0.05, 0.01).holds is False  # wholly outside
    assert within([0.0, 0.02], 0.01).holds is None  # mean 0.01 ± 0.02: straddles
    assert within([1.02, 0.98, 1.01], 0.1, center=1.0).holds is True
    gains = [-0.0023, -0.0034, 0.0085]  # recomputed vs EMA 0.9 agree within noise: interval -0.015..+0.017
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
    # A known outcome that is not the reverse of the claim (a tie, no effect) is shown by its own finding.
    tie = every_seed([True, True, True], label="epoch 1", what="within 0.02")
    c = Claim.decide("x", exceeds([0.0, -0.011, -0.102]), exp, differs_if=tie)
    assert c.verdict == DIFFERS and c.evidence.endswith("known outcome here: epoch 1: 3/3 seeds within 0.02")
    assert Claim.decide("x", exceeds([0.0, -0.011, -0.102]), Expect(), differs_if=tie).verdict == INCONCLUSIVE
    assert Claim.decide("x", exceeds([0.0, -0.011, 0.3]), exp,
                        differs_if=every_seed([True, True, False])).verdict == INCONCLUSIVE
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
    assert (m.source("gap"), f.source("lead"), c.source("gap")) == ("MNIST-1D table", "default table",
                                                                         "default table")
    # One set of per-seed gaps, three datasets: the MNIST-1D magnitude is not applied to Fashion-MNIST.
    gaps = [0.08, 0.10, 0.09]  # interval 0.065..0.115
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


# ------------------------------------------------------------------------------------------ seeds to decide

def _brute_force_seeds(std, distance):
    """The smallest n >= 2 with t(0.975, n - 1) * std / sqrt(n) < |distance|, by counting up (scipy's t)."""
    from scipy.stats import t

    n = 2
    while t.ppf(0.975, n - 1) * std / np.sqrt(n) >= abs(distance):
        n += 1
    return n


def test_seeds_to_decide_against_hand_computed_quantiles():
    # std 1, distance 1: t(0.975, 5) = 2.5706 -> 2.5706 / sqrt(6) = 1.049 (not enough);
    # t(0.975, 6) = 2.4469 -> 2.4469 / sqrt(7) = 0.925 < 1: 7 seeds.
    assert seeds_to_decide(1.0, 1.0) == 7
    assert seeds_to_decide(1.0, -1.0) == 7  # the side does not matter
    # The example (small_batch, GN flatter than BN): seeds 0.218/0.379/0.346 above 0.15, 95% interval
    # 0.103..0.526 with 3 seeds. Sample std 0.0848, distance 0.1643: t(0.975, 3) = 3.1824 -> 3.1824 * 0.0848 / 2 =
    # 0.135 < 0.164: 4 seeds.
    f = exceeds([0.218, 0.379, 0.346], 0.15)
    assert f.holds is None and f.to_decide == 4
    assert seeds_to_decide(0.3, 0.0) == math.inf  # the mean on the threshold: no number of seeds
    assert seeds_to_decide(0.0, 0.1) == 2  # no spread: two seeds give a zero-width interval
    with pytest.raises(ValueError, match="must be finite"):
        seeds_to_decide(float("nan"), 0.1)


@pytest.mark.parametrize("std, distance", [(0.05, 0.01), (0.2, 0.15), (1.0, 0.03), (0.01, 0.5), (0.13, 0.0401)])
def test_seeds_to_decide_is_the_smallest_count_scipy_agrees_with(std, distance):
    assert seeds_to_decide(std, distance) == _brute_force_seeds(std, distance)


def test_a_decided_finding_needs_no_more_seeds_and_a_yes_no_split_none_would_decide():
    assert exceeds([0.30, 0.35, 0.40], 0.20).to_decide is None
    assert exceeds([0.30, 0.35, 0.40], 0.48).to_decide is None  # contradicted: decided too
    assert every_seed([True, False, True]).to_decide == math.inf
    assert Finding(None, "by hand").to_decide is None
    assert exceeds([0.2], 0.3).to_decide is None  # one seed: no spread to extrapolate from (and decided)


def test_every_is_decided_by_all_parts_or_by_the_first_contradicted_one():
    toward = exceeds([0.218, 0.379, 0.346], 0.15)  # mean above: 4 seeds would make it hold
    slow = exceeds([0.01, 0.05, -0.02, 0.04], 0.0)  # mean +0.02 above 0, wide: many seeds
    against = falls_below([0.22, 0.30, 0.26], 0.2)  # mean 0.26 above 0.2: contradicted with a few more seeds
    n_slow, n_against = slow.to_decide, against.to_decide
    assert n_slow > 4 and every([toward, slow]).to_decide == n_slow  # every part must hold: the largest need
    assert n_against < n_slow and every([toward, slow, against]).to_decide == n_against  # or one is contradicted
    assert every([toward, every_seed([True, False])]).to_decide == math.inf


def test_an_inconclusive_claim_says_how_many_seeds_would_decide_it():
    c = Claim.decide("GN flatter than BN", exceeds([0.218, 0.379, 0.346], 0.15))
    assert c.verdict == INCONCLUSIVE and c.to_decide == 4
    assert c.note == ("the threshold lies inside the spread over seeds; with this mean and spread 4 seeds would "
                      "decide it (3 here), for the claim")
    assert [n.values for n in c.comparisons] == [(0.218, 0.379, 0.346)]
    c = Claim.decide("x", exceeds([0.1, 0.2, 0.12, 0.3], 0.15))  # mean above, two seeds below
    assert c.note.endswith("for the claim; a PASS also needs every seed on the claimed side (2 of 4 are not)")
    c = Claim.decide("x", exceeds([0.1, 0.2, 0.12, 0.13], 0.15))  # mean below: more seeds would contradict it
    assert c.note.endswith(f"{c.to_decide} seeds would decide it (4 here), against the claim")
    assert Claim.decide("x", every_seed([True, False])).note.endswith(
        "no number of seeds would decide it (the seeds split on a yes/no)")
    assert Claim.decide("x", exceeds([0.1, 0.3], 0.2)).note.endswith(
        "no number of seeds would decide it (the mean sits on the threshold)")
    assert Claim.decide("x", exceeds([0.3, 0.35], 0.2)).comparisons[0].holds is None
    assert Claim.decide("x", Finding(None, "by hand")).note == "the threshold lies inside the spread over seeds"
