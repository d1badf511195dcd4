"""Verdicts for a study's claims: decided seed by seed, against the expectations of the dataset in use.

A study's analysis module (``experiments/<study>.py``) states each claim in the source's own, dataset-independent
direction ("batch norm leads no normalization in training accuracy"), measures one number per seed, and lets this
module decide. Magnitudes and known non-transfers live in a per-dataset table in the study module, so the same
claim is held to MNIST-1D's numbers on MNIST-1D and to Fashion-MNIST's on Fashion-MNIST (``experiments/REFERENCES.md``
lists the sources and what this project measures on each dataset).

Verdict words (also the legend of every ``report.md``):

- ``PASS`` -- the claim holds on this dataset: every seed is on the claimed side of the threshold, and so is the
  whole 95% confidence interval of the mean over seeds.
- ``FAIL`` -- the claim was expected to hold on this dataset and the seeds contradict it (the whole interval on the
  other side): the software or the science disagrees with what we expect. Never used for a claim the dataset's
  table expects to differ.
- ``DIFFERS`` -- the source's claim is known not to transfer to this dataset (the table says so, with a one-line
  reason) and the numbers show the known outcome, as this project measured before: written "DIFFERS (from
  CIFAR-10, as measured)". A finding, not a defect.
- ``INCONCLUSIVE`` -- the threshold lies inside the spread over seeds (a seed on the other side, or the interval
  across it): this run cannot call it either way; more seeds, or a larger effect, would. Its note says how many
  seeds would decide it with the same mean and spread (:func:`seeds_to_decide`: the smallest ``n`` with
  ``t(0.975, n-1) * s / sqrt(n) < |mean - threshold|``), or that no number would (the mean on the threshold, or
  seeds that split on a yes/no).

Deciding on seeds: a claim's quantity is measured once per seed, ``x_1 .. x_n`` (for "A leads B" the seed-paired
difference ``A - B``: members with the same seed share their initialisation key and batch order). Its interval is
the 95% confidence interval of the mean, ``mean ± t(0.975, n-1) * std(x, ddof=1) / sqrt(n)`` (Student's t: 4.30
for 3, 2.78 for 5), so a quantity whose true mean sits exactly on the threshold is called either way in under 5%
of reruns (for normally spread seeds). ``exceeds`` (the claim
"x > t") holds when every ``x_i > t`` and the interval lies above ``t``, is contradicted when the interval lies at
or below ``t``, and is unclear otherwise; ``falls_below`` mirrors it; ``mean_above`` ("matches or beats") and
``within`` ("no effect") ask the interval alone, so one extreme member cannot decide them; ``every_seed`` takes
a yes/no per seed; ``every`` joins findings (holds when all hold, contradicted as soon as one is). A difference of
means alone never decides, and thresholds sit well away from the measured values, so a rerun with other seeds
gives the same verdict.

Writing a claim (the API the study modules use; ``experiments/bn_vs_baseline.py`` is a complete example)::

    from bnjax.claims import Claim, Expect, every_seed, exceeds, expectations, paired

    EXPECT = {                                   # per dataset; "default" serves datasets without a table
        "default": {"train_gap": Expect(0.0), "epoch1": Expect(0.0)},
        "mnist1d": {"train_gap": Expect(0.30),   # a magnitude measured on this dataset, with margin
                    "epoch1": Expect(differs="CIFAR-10", why="one line: why it does not transfer")},
        "fashion_mnist": {"train_gap": Expect(0.10)},
    }

    def analyze(results):
        exp = expectations(EXPECT, results)      # the table of the dataset in use
        bn, base = results["batchnorm"], results["baseline"]
        gap = paired(bn, bn.final("train_acc"), base, base.final("train_acc"))   # (S,) seed by seed
        lead1 = paired(bn, bn.curves("train_acc")[:, 1], base, base.curves("train_acc")[:, 1])
        return [
            Claim.decide("BN ends ahead of no normalization in training accuracy (source, setting: number)",
                         exceeds(gap, exp["train_gap"].threshold, label="BN - none"), exp["train_gap"],
                         source=exp.source("train_gap")),
            Claim.decide("BN leads at epoch 1 (source)", exceeds(lead1, 0.0), exp["epoch1"],
                         differs_if=every_seed(lead1 <= 0.02, what="tie or behind")),   # the known outcome
        ]

A claim may also be built directly, ``Claim(text, verdict, evidence, note=...)``, with a verdict word or a bool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DIFFERS",
    "FAIL",
    "INCONCLUSIVE",
    "LEGEND",
    "PASS",
    "VERDICTS",
    "Claim",
    "Comparison",
    "Expect",
    "Expectations",
    "Finding",
    "dataset_of",
    "every",
    "every_seed",
    "exceeds",
    "expectations",
    "falls_below",
    "interval",
    "mean_above",
    "paired",
    "seeds",
    "seeds_to_decide",
    "undecided_note",
    "within",
]

PASS, FAIL, DIFFERS, INCONCLUSIVE = "PASS", "FAIL", "DIFFERS", "INCONCLUSIVE"
VERDICTS: tuple[str, ...] = (PASS, FAIL, DIFFERS, INCONCLUSIVE)

LEGEND: dict[str, str] = {
    PASS: "the claim holds on this dataset: every seed is on the claimed side of the threshold, and so is the whole "
          "95% confidence interval of the mean over seeds",
    FAIL: "the claim was expected to hold on this dataset and the seeds contradict it (the whole interval on the "
          "other side): the software or the science disagrees with what we expect",
    DIFFERS: "the source's claim is known not to transfer to this dataset and the numbers show the known outcome, as "
             "measured before (a finding, not a defect; the note says why)",
    INCONCLUSIVE: "the threshold lies inside the spread over seeds, so this run cannot call it either way",
}

DATASET_TITLES = {"mnist1d": "MNIST-1D", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "mnist": "MNIST",
                  "digits": "digits", "synthetic": "synthetic"}


# ------------------------------------------------------------------------------------------- expectations

@dataclass(frozen=True)
class Expect:
    """What a claim should show on one dataset.

    Attributes:
      threshold: the magnitude the claim's quantity must clear on this dataset (``0.0``: direction only).
      differs: the source's dataset (e.g. ``"CIFAR-10"``) when the source's claim is known not to transfer to this
        dataset; a contradiction then reads "DIFFERS (from <differs>, as measured)" instead of FAIL.
      why: one line for the report: why it differs (required with ``differs``).
    """

    threshold: float = 0.0
    differs: str | None = None
    why: str = ""

    def __post_init__(self) -> None:
        if self.differs and not self.why:
            raise ValueError(f"Expect(differs={self.differs!r}) needs why=, the one-line reason shown in the report.")


@dataclass(frozen=True)
class Expectations:
    """The expectations of one dataset: ``exp[key]`` is the dataset's own entry, else the ``"default"`` one.

    Attributes:
      dataset: the dataset's registry name (``"mnist1d"``).
      table: claim key -> ``Expect``, the defaults overridden by the dataset's own table.
      own: the keys the dataset's own table sets (empty for a dataset without a table).
    """

    dataset: str
    table: Mapping[str, Expect]
    own: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Expect:
        try:
            return self.table[key]
        except KeyError:
            raise KeyError(f"no expectation {key!r} for dataset {self.dataset!r} and no default; "
                           f"keys: {sorted(self.table)}") from None

    @property
    def title(self) -> str:
        """The dataset's printed name (``"MNIST-1D"``)."""
        return DATASET_TITLES.get(self.dataset, self.dataset)

    def source(self, key: str) -> str:
        """Where ``self[key]`` comes from, for evidence strings: ``"MNIST-1D table"`` or ``"default table"``."""
        return f"{self.title} table" if key in self.own else "default table"


def dataset_of(results: Any) -> str:
    """The ``data.name`` every variant of ``results`` trained on (e.g. ``"mnist1d"``).

    Raises:
      ValueError: the variants trained on different datasets (a per-dataset claim cannot be judged).
    """
    names = set()
    for v in results:
        spec = getattr(v, "spec", {}) or {}
        names.add(spec.get("data", {}).get("name"))
    names.discard(None)
    if not names:
        cfg = getattr(results, "config", None)
        names = {v.data.name for v in getattr(cfg, "variants", ())}
    if len(names) != 1:
        raise ValueError(f"the variants trained on {sorted(map(str, names)) or 'no recorded dataset'}; per-dataset "
                         f"claims need one dataset per run.")
    return names.pop()


def expectations(tables: Mapping[str, Mapping[str, Expect]], results_or_dataset: Any) -> Expectations:
    """The expectations for the dataset of ``results_or_dataset`` (a ``StudyResults`` or a dataset name).

    Args:
      tables: ``{"default": {...}, "mnist1d": {...}, ...}``: per dataset, claim key -> ``Expect``; a dataset's
        table overrides ``"default"`` key by key; a dataset without a table gets ``"default"`` alone.
    """
    dataset = results_or_dataset if isinstance(results_or_dataset, str) else dataset_of(results_or_dataset)
    own = {} if dataset == "default" else dict(tables.get(dataset, {}))
    return Expectations(dataset, {**tables.get("default", {}), **own}, frozenset(own))


# ------------------------------------------------------------------------------------------------ seeds

def seeds(v: Any, **where: Any) -> list[int]:
    """The seeds of the members of variant ``v`` matching ``where``, in member order (the order of
    ``v.final(...)`` and ``v.curves(...)`` rows)."""
    mask = v.mask(**where)
    return [int(m["seed"]) for m, keep in zip(v.members, mask) if keep]


def paired(a: Any, a_values: Any, b: Any, b_values: Any, *, where_a: Mapping[str, Any] | None = None,
           where_b: Mapping[str, Any] | None = None) -> np.ndarray:
    """Seed-paired differences ``a_values - b_values``, rows matched by seed.

    Args:
      a, b: the variants (``VariantResult``) the values come from.
      a_values, b_values: ``(S, ...)`` per-member values of the members of ``a``/``b`` matching ``where_a``/``where_b``
        (e.g. ``a.final("train_acc", dropout=0.0)``), in member order.

    Returns:
      ``(S', ...)`` differences over the seeds both have, in ``a``'s seed order.

    Raises:
      ValueError: the variants share no seed, or a row count does not match the members.
    """
    sa, sb = seeds(a, **(where_a or {})), seeds(b, **(where_b or {}))
    xa, xb = np.asarray(a_values, float), np.asarray(b_values, float)
    if xa.shape[0] != len(sa) or xb.shape[0] != len(sb):
        raise ValueError(f"paired(): {xa.shape[0]} values for {len(sa)} members of {a.name!r} and {xb.shape[0]} "
                         f"for {len(sb)} of {b.name!r}; pass the rows of the same where= selection.")
    common = [s for s in sa if s in sb]
    if not common:
        raise ValueError(f"paired(): {a.name!r} (seeds {sa}) and {b.name!r} (seeds {sb}) share no seed.")
    return xa[[sa.index(s) for s in common]] - xb[[sb.index(s) for s in common]]


# --------------------------------------------------------------------------------------------- findings

@dataclass(frozen=True)
class Comparison:
    """One test behind a finding: per-seed values against a threshold, with the numbers a summary keeps.

    Attributes:
      label: what the values are (``"BN - none, per seed"``; may be empty).
      relation: the claimed relation, e.g. ``"> 0.3"``, ``"mean > -0.02"``, ``"within 1 ± 0.1"``,
        ``"every seed"``.
      values: the finite per-seed values (1.0/0.0 for a yes/no per seed).
      mean: their mean (for a yes/no: the fraction of yes).
      half_width: the half-width of the 95% interval of the mean (:func:`interval`); NaN for a yes/no.
      margin: how far the mean lies on the claimed side of the threshold (negative: on the other side; for
        ``within``, from the nearer edge of the band); NaN for a yes/no.
      holds: this test's own outcome: True, False, or None (unclear).
      to_decide: for an unclear test, the number of seeds that would decide it with this mean and spread
        (:func:`seeds_to_decide`; ``math.inf``: no number would); None when decided or with one seed.
      off_side: seeds on the other side of the threshold from the claim, for tests whose PASS needs every seed
        on the claimed side (:func:`exceeds`, :func:`falls_below`); 0 for the others.
      text: the short form, e.g. ``"BN - none, per seed: +0.466 (95% interval +0.428..+0.504) > 0.3"``.
    """

    label: str
    relation: str
    values: tuple[float, ...]
    mean: float
    half_width: float
    margin: float
    holds: bool | None
    to_decide: float | None = None
    off_side: int = 0
    text: str = ""


@dataclass(frozen=True)
class Finding:
    """What the seeds say about one comparison (or several, joined by :func:`every`).

    Attributes:
      holds: True (the claim holds), False (it is contradicted) or None (unclear: the threshold lies inside the
        spread over seeds).
      summary: the numbers behind it, e.g.
        ``"BN - none: +0.466 (95% interval +0.428..+0.504; seeds +0.447/+0.475/+0.477) > 0.3"``.
      comparisons: the tests it was decided on (empty for a finding written by hand).
    """

    holds: bool | None
    summary: str
    comparisons: tuple[Comparison, ...] = field(default=(), repr=False)

    @property
    def to_decide(self) -> float | None:
        """For an unclear finding, how many seeds would decide it with the same means and spreads.

        Each unclear test needs :attr:`Comparison.to_decide` seeds; the finding is decided once every test is
        (all hold) or once one test is contradicted, so this is the largest need, or the smallest need of a test
        whose mean lies on the contradicting side if that is fewer. ``math.inf``: no number of seeds would;
        None: decided, or not estimable (a finding written by hand, one seed).
        """
        unclear = [c for c in self.comparisons if c.holds is None]
        if self.holds is not None or not unclear:
            return None
        needs = [c.to_decide for c in unclear]
        n = None if any(x is None for x in needs) else max(x for x in needs if x is not None)
        against = [c.to_decide for c in unclear if c.to_decide is not None and c.margin < 0]
        if against:
            n = min(against) if n is None else min(n, min(against))
        return n


def interval(values: Any) -> tuple[float, float]:
    """``(mean, half_width)`` of the 95% confidence interval of the mean of the finite per-seed values:
    ``half_width = t(0.975, n - 1) * std(x, ddof=1) / sqrt(n)`` (Student's t: 4.30 for 3 seeds, 2.57 for 6);
    half-width 0 for one value; ``(nan, nan)`` when none is finite."""
    x = _finite(values)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), 0.0
    from scipy.stats import t as student_t  # a dependency of jax

    half = float(student_t.ppf(0.975, x.size - 1)) * float(x.std(ddof=1)) / np.sqrt(x.size)
    return float(x.mean()), half


_Z975 = 1.959963984540054  # the normal 97.5% quantile, the limit of t(0.975, n - 1)


def seeds_to_decide(std: float, distance: float) -> float:
    """The smallest seed count ``n >= 2`` whose 95% interval of the mean is narrower than ``distance``.

    With ``n`` seeds of the same mean and spread the interval is ``mean ± t(0.975, n - 1) * std / sqrt(n)``; once
    ``t(0.975, n - 1) * std / sqrt(n) < |distance|`` (``distance = mean - threshold``) it lies wholly on one side of
    the threshold, and the interval part of the verdict rule is decided: for the claim when the mean is on its
    side, against it (FAIL, or DIFFERS where the dataset's table expects that) otherwise. A PASS also needs every
    seed on the claimed side, which more seeds make harder when the spread reaches across the threshold, so the
    count is a floor for that case.

    Args:
      std: the sample standard deviation of the per-seed values (``ddof=1``).
      distance: the mean minus the threshold (the sign does not matter).

    Returns:
      ``n`` (an int), or ``math.inf`` when the mean sits on the threshold (no number of seeds decides it).
    """
    d = abs(float(distance))
    if not (np.isfinite(std) and np.isfinite(d)) or std < 0:
        raise ValueError(f"seeds_to_decide(std={std!r}, distance={distance!r}): both must be finite, std >= 0.")
    if d == 0.0:
        return math.inf
    if std == 0.0:
        return 2
    from scipy.stats import t as student_t

    # t(0.975, n - 1) > z for every n, so no n below (z * std / d)^2 is enough; from there t is within a few steps.
    n = max(2, math.floor((_Z975 * std / d) ** 2))
    while float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n) >= d:
        n += 1
    return n


def _finite(values: Any) -> np.ndarray:
    x = np.asarray(values, float).ravel()
    return x[np.isfinite(x)]


def _describe(x: np.ndarray, relation: str, digits: int, label: str, signed: bool = True, *,
              per_seed: bool = True) -> str:
    f = (lambda a: f"{a:+.{digits}f}") if signed else (lambda a: f"{a:.{digits}f}")  # noqa: E731
    m, half = interval(x)
    per = "/".join(f(a) for a in x) if x.size <= 6 else f"{f(x.min())}..{f(x.max())}, {x.size} seeds"
    head = f"{label}: " if label else ""
    seeds_part = f"; seeds {per}" if per_seed else ""
    return f"{head}{f(m)} (95% interval {f(m - half)}..{f(m + half)}{seeds_part}) {relation}"


def _signed(x: np.ndarray, reference: float) -> bool:
    """Differences (a value below 0, or a comparison with 0 or less) print with their sign."""
    return bool(reference <= 0 or (x < 0).any())


def _none(label: str) -> Finding:
    return Finding(None, f"{label + ': ' if label else ''}no finite value")


def _finding(x: np.ndarray, holds: bool | None, margin: float, relation: str, digits: int, label: str,
             signed: bool, off_side: int = 0) -> Finding:
    """A one-test finding: its summary, and its numbers as a :class:`Comparison`."""
    m, half = interval(x)
    to_decide = seeds_to_decide(float(x.std(ddof=1)), margin) if holds is None and x.size > 1 else None
    short = _describe(x, relation, digits, label, signed, per_seed=False)
    c = Comparison(label, relation, tuple(float(a) for a in x), float(m), float(half), float(margin), holds, to_decide,
                   off_side, short)
    return Finding(holds, _describe(x, relation, digits, label, signed), (c,))


def exceeds(values: Any, threshold: float = 0.0, *, digits: int = 3, label: str = "") -> Finding:
    """The claim "x > threshold" on per-seed values ``x``.

    Holds when every seed exceeds the threshold and so does the whole confidence interval of the mean
    (:func:`interval`); contradicted when the whole interval is at or below it; unclear otherwise. Non-finite
    values (diverged members) are left out; none finite is unclear.
    """
    x = _finite(values)
    if x.size == 0:
        return _none(label)
    m, half = interval(x)
    holds = True if (x.min() > threshold and m - half > threshold) else False if m + half <= threshold else None
    return _finding(x, holds, m - threshold, f"> {threshold:g}", digits, label, _signed(x, threshold),
                    int((x <= threshold).sum()))


def falls_below(values: Any, threshold: float = 0.0, *, digits: int = 3, label: str = "") -> Finding:
    """The claim "x < threshold": the mirror of :func:`exceeds`."""
    x = _finite(values)
    if x.size == 0:
        return _none(label)
    m, half = interval(x)
    holds = True if (x.max() < threshold and m + half < threshold) else False if m - half >= threshold else None
    return _finding(x, holds, threshold - m, f"< {threshold:g}", digits, label, _signed(x, threshold),
                    int((x >= threshold).sum()))


def mean_above(values: Any, threshold: float, *, digits: int = 4, label: str = "") -> Finding:
    """The claim "x is at least ``threshold`` on average" (non-inferiority, "matches or beats"): holds when the
    confidence interval of the mean lies above the threshold, contradicted when it lies at or below, unclear
    otherwise. For claims where single seeds hover around zero by construction (two estimators
    that agree), so that requiring every seed would be a hair trigger."""
    x = _finite(values)
    if x.size == 0:
        return _none(label)
    m, half = interval(x)
    holds = True if m - half > threshold else False if m + half <= threshold else None
    return _finding(x, holds, m - threshold, f"mean > {threshold:g}", digits, label, _signed(x, threshold))


def within(values: Any, tol: float, *, center: float = 0.0, digits: int = 4, label: str = "") -> Finding:
    """The claim "the mean of x is within ``center ± tol``" (no effect): holds when the confidence interval of the
    mean lies inside, contradicted when it lies wholly outside, unclear otherwise. A statement about the
    typical seed, not the most extreme one (a maximum over members is a hair trigger)."""
    x = _finite(values)
    if x.size == 0:
        return _none(label)
    m, half = interval(x)
    lo, hi = m - half, m + half
    holds = (True if (lo > center - tol and hi < center + tol)
             else False if (lo >= center + tol or hi <= center - tol) else None)
    margin = min(m - (center - tol), (center + tol) - m)  # from the nearer edge; negative outside the band
    return _finding(x, holds, margin, f"within {center:g} ± {tol:g}", digits, label, _signed(x, center))


def every_seed(flags: Any, *, label: str = "", what: str = "") -> Finding:
    """A yes/no observation per seed (e.g. "the loss blew up"): holds when every seed says yes, contradicted when
    none does, unclear when they disagree (and no number of seeds would then decide it)."""
    b = np.asarray(flags, bool).ravel()
    holds = True if b.all() else False if not b.any() else None
    head = f"{label}: " if label else ""
    text = f"{head}{int(b.sum())}/{b.size} seeds{' ' + what if what else ''}"
    c = Comparison(label, f"every seed{' ' + what if what else ''}", tuple(float(a) for a in b),
                   float(b.mean()) if b.size else float("nan"), float("nan"), float("nan"), holds,
                   math.inf if holds is None else None, text=text)
    return Finding(holds, text, (c,))


def every(findings: Iterable[Finding], *, summary: str | None = None) -> Finding:
    """All of ``findings`` at once: holds when every one holds, contradicted as soon as one is, else unclear.

    ``summary`` replaces the joined summaries (which can be long, e.g. one per epoch); the comparisons of all the
    findings are kept.
    """
    fs: Sequence[Finding] = list(findings)
    if not fs:
        raise ValueError("every() needs at least one finding.")
    if any(f.holds is False for f in fs):
        holds: bool | None = False
    elif all(f.holds is True for f in fs):
        holds = True
    else:
        holds = None
    return Finding(holds, summary if summary is not None else "; ".join(f.summary for f in fs),
                   tuple(c for f in fs for c in f.comparisons))


# ---------------------------------------------------------------------------------------------- claims

@dataclass(frozen=True)
class Claim:
    """A statement about the results and the verdict the numbers give it.

    Attributes:
      text: the claim in the source's direction, e.g. "BN's training accuracy leads no normalization at every
        epoch >= 1 (CS231n BatchNormalization.ipynb)".
      verdict: one of ``VERDICTS``; ``True``/``False`` are accepted for PASS/FAIL.
      evidence: the numbers behind the verdict (per-seed values, interval, threshold and where it comes from).
      note: one line for the report, required with DIFFERS and INCONCLUSIVE (why it differs / what is unclear).
      versus: with DIFFERS, the source's dataset the result differs from (``"CIFAR-10"``).
      comparisons: the tests behind the verdict, with their per-seed numbers (:meth:`decide` fills them in).
      to_decide: with INCONCLUSIVE, the seeds that would decide it with the same means and spreads
        (:attr:`Finding.to_decide`; ``math.inf``: no number would; None: not estimable).
    """

    text: str
    verdict: str
    evidence: str
    note: str = ""
    versus: str = ""
    comparisons: tuple[Comparison, ...] = field(default=(), repr=False)
    to_decide: float | None = None

    def __post_init__(self) -> None:
        v = self.verdict
        if isinstance(v, (bool, np.bool_)):
            object.__setattr__(self, "verdict", PASS if v else FAIL)
        elif v not in VERDICTS:
            raise ValueError(f"Claim verdict {v!r} is not one of {', '.join(VERDICTS)} (or a bool for PASS/FAIL).")
        if self.verdict == DIFFERS and not (self.versus and self.note):
            raise ValueError("a DIFFERS claim needs versus= (the source's dataset) and note= (why, one line).")

    @property
    def passed(self) -> bool:
        """True for PASS."""
        return self.verdict == PASS

    @property
    def label(self) -> str:
        """The verdict as printed: ``"DIFFERS (from CIFAR-10, as measured)"`` or the bare word."""
        return f"{DIFFERS} (from {self.versus}, as measured)" if self.verdict == DIFFERS else self.verdict

    @classmethod
    def decide(cls, text: str, finding: Finding, expect: Expect | None = None, *, evidence: str = "",
               source: str = "", differs_if: Finding | None = None) -> Claim:
        """The claim's verdict from a finding and the dataset's expectation.

        holds -> PASS (with a note when the table expected it to differ); where the table says the source's claim
        does not transfer: DIFFERS when the finding is contradicted or ``differs_if`` holds; otherwise contradicted
        -> FAIL; anything else -> INCONCLUSIVE.

        Args:
          evidence: extra numbers appended to the finding's summary.
          source: where the threshold comes from (e.g. ``"MNIST-1D table"``), appended to the summary.
          differs_if: the positive evidence of the known outcome on this dataset when it is not the reverse of the
            claim, e.g. "no effect" (:func:`within`) or "no seed leads by more than the resolution"
            (:func:`every_seed`); used only where the table expects the claim to differ.
        """
        expect = expect or Expect()
        parts = [finding.summary + (f" ({source})" if source else "")]
        if evidence:
            parts.append(evidence)
        if expect.differs and differs_if is not None:
            parts.append(f"known outcome here: {differs_if.summary}")
        ev = "; ".join(parts)
        numbers = finding.comparisons
        if finding.holds is True:
            note = (f"expected to differ from {expect.differs} here ({expect.why}), yet it holds in this run"
                    if expect.differs else "")
            return cls(text, PASS, ev, note, comparisons=numbers)
        if expect.differs and (finding.holds is False or (differs_if is not None and differs_if.holds is True)):
            return cls(text, DIFFERS, ev, expect.why, expect.differs, comparisons=numbers)
        if finding.holds is False:
            return cls(text, FAIL, ev, comparisons=numbers)
        return cls(text, INCONCLUSIVE, ev, undecided_note(finding), comparisons=numbers, to_decide=finding.to_decide)


def undecided_note(finding: Finding) -> str:
    """The note of an INCONCLUSIVE claim: the threshold lies inside the spread, and how many seeds would decide it.

    E.g. "the threshold lies inside the spread over seeds; with this mean and spread 12 seeds would decide it (5
    here), for the claim; a PASS also needs every seed on the claimed side (1 of 5 is not)".
    """
    note = "the threshold lies inside the spread over seeds"
    n = finding.to_decide
    unclear = [c for c in finding.comparisons if c.holds is None]
    if n is None or not unclear:
        return note
    if n == math.inf:
        split = [c for c in unclear if c.to_decide == math.inf and not np.isfinite(c.margin)]
        why = "the seeds split on a yes/no" if split else "the mean sits on the threshold"
        return f"{note}; no number of seeds would decide it ({why})"
    here = max(len(c.values) for c in unclear)
    deciding = [c for c in unclear if c.to_decide == n]
    if any(c.margin < 0 for c in deciding):
        return f"{note}; with this mean and spread {n} seeds would decide it ({here} here), against the claim"
    note += f"; with this mean and spread {n} seeds would decide it ({here} here), for the claim"
    off = [c for c in unclear if c.off_side]
    if off:
        worst = max(off, key=lambda c: c.off_side)
        note += (f"; a PASS also needs every seed on the claimed side ({worst.off_side} of {len(worst.values)} "
                 f"{'is' if worst.off_side == 1 else 'are'} not)")
    return note
