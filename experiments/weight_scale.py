"""Claims and plots of the weight-scale study (CS231n BatchNormalization.ipynb, "Batch normalization and
initialization"). Sources and per-dataset numbers: experiments/REFERENCES.md, "weight_scale"."""

from __future__ import annotations

import math

import numpy as np

from bnjax.run.claims import Claim, Expect, Finding, every, every_seed, exceeds, expectations, falls_below, paired
from bnjax.run.report import fmt, loss_tail, plot_metric_vs_axis

CHANCE = 0.10  # every dataset in bnjax.data has 10 classes
BLOWUP = 10 * math.log(10)  # a final training loss 10x that of a uniform guess

# Per dataset: "small" is the largest init scale at which the unnormalised net is expected not to learn (CS231n,
# CIFAR-10: up to ~3e-3); "stuck" the best val accuracy that still counts as not learning; "learns" the least
# best val accuracy BN must reach at every scale <= 0.1; "bn_gain" the least BN - none best val gap at small scales.
EXPECT = {
    "default": {"small": Expect(1e-3), "blowup": Expect(), "stuck": Expect(CHANCE + 0.05), "learns": Expect(CHANCE + 0.05),
                "bn_gain": Expect(0.05)},
    "mnist1d": {"learns": Expect(0.25), "bn_gain": Expect(0.10)},
    "fashion_mnist": {"learns": Expect(0.50), "bn_gain": Expect(0.30)},
}


def _by_scale(v, fn):
    """{scale: per-seed values of fn(v, weight_scale=scale)}."""
    return {ws: fn(v, weight_scale=ws) for ws in v.values("weight_scale")}


def analyze(results):
    exp = expectations(EXPECT, results)
    base, bn = results["baseline"], results["batchnorm"]
    b_val = _by_scale(base, lambda v, **w: v.best("val_acc", **w))
    n_val = _by_scale(bn, lambda v, **w: v.best("val_acc", **w))
    b_tail = _by_scale(base, loss_tail)
    cut = exp["small"].threshold
    small = [ws for ws in b_val if ws <= cut * (1 + 1e-6)]
    claims = []

    stuck = exp["stuck"].threshold
    if small:
        f = every([falls_below(b_val[ws], stuck) for ws in small],
                  summary="best val per scale: " + ", ".join(f"ws {ws:.2g}: {fmt(b_val[ws])}" for ws in small)
                  + f" < {stuck:g}")
        f_ev = f"final loss at ws {small[0]:.2g}: {fmt(b_tail[small[0]])}"
    else:
        f, f_ev = Finding(None, f"no scale <= {cut:g} in the sweep"), ""
    claims.append(Claim.decide(
        f"Without normalization the net does not learn at small init scales: best val accuracy stays near chance "
        f"(< {stuck:g}) at every ws <= {cut:g} (CS231n, CIFAR-10: ~.12 and loss 2.30 up to ws ~3e-3)",
        f, exp["stuck"], source=exp.source("stuck"), evidence=f_ev,
    ))

    top = max(b_tail)
    blown = ~np.isfinite(b_tail[top]) | (b_tail[top] > BLOWUP)
    n_div = int(base.diverged().sum())
    claims.append(Claim.decide(
        f"Without normalization the largest scale blows up: at ws = {top:g} the final training loss is non-finite "
        f"or above 10 ln 10 = {BLOWUP:.1f} (CS231n, CIFAR-10: inf/NaN from ws ~0.15; diverged members are "
        "reported, the others train on)",
        every_seed(blown, label=f"ws {top:g}", what="blow up"), exp["blowup"],
        evidence=f"final loss (mean of the last 100 steps): {fmt(b_tail[top], 1)}; scales where every seed blows "
                 f"up: {', '.join(f'{ws:.2g}' for ws, t in b_tail.items() if np.all(~np.isfinite(t) | (t > BLOWUP)))}"
                 f"; members with a non-finite loss: {n_div}/{base.num_members}",
    ))

    learns = exp["learns"].threshold
    learn_range = [ws for ws in n_val if ws <= 0.1]
    worst = min(learn_range, key=lambda ws: np.nanmean(n_val[ws]))
    claims.append(Claim.decide(
        f"With BN the net learns at every init scale from 1e-4 to 0.1: best val accuracy > {learns:g} at each "
        f"(CS231n, CIFAR-10: .23-.33 across the range)",
        every([exceeds(n_val[ws], learns) for ws in learn_range],
              summary=f"lowest scale: ws {worst:.2g}, BN best val {fmt(n_val[worst])} > {learns:g}"),
        exp["learns"], source=exp.source("learns"), evidence=f"BN at ws {max(n_val):g}: {fmt(n_val[max(n_val)])}",
    ))

    gain = exp["bn_gain"].threshold
    gaps = {ws: paired(bn, n_val[ws], base, b_val[ws], where_a={"weight_scale": ws}, where_b={"weight_scale": ws})
            for ws in small}
    f = (every([exceeds(g, gain) for g in gaps.values()],
               summary="BN - none best val, per seed: " + ", ".join(f"ws {ws:.2g}: {fmt(g)}" for ws, g in gaps.items())
               + f" > {gain:g}") if gaps else Finding(None, f"no scale <= {cut:g} in the sweep"))
    claims.append(Claim.decide(
        f"At small init scales (ws <= {cut:g}) BN beats no normalization in best val accuracy, seed by seed "
        "(CS231n, CIFAR-10: by .10-.15)",
        f, exp["bn_gain"], source=exp.source("bn_gain"),
    ))
    return claims


def notes(results):
    base, bn = results["baseline"], results["batchnorm"]
    out = []
    for v in (base, bn):
        val = {ws: np.nanmean(v.best("val_acc", weight_scale=ws)) for ws in v.values("weight_scale")}
        best = max(val, key=val.get)
        out.append(f"{v.name}: peak best val accuracy {val[best]:.3f} at ws {best:.3g} "
                   f"(CS231n, CIFAR-10: baseline .31 at ws ~5e-2, BN .32-.33 at ~2e-2)")
    return out


def plots(results, out_dir):
    return [plot_metric_vs_axis(
        results, "weight_scale",
        [("train_acc", "best train accuracy"), ("val_acc", "best val accuracy"), ("loss_tail", "final training loss")],
        out_dir, "weight_scale.png", reduce="best", logx=True, logy=[False, False, True],
        xlabel="weight scale (init std)",
        caption="Best training and validation accuracy over the 10 epochs and the final training loss (mean of the "
                "last 100 steps) against the init scale, as in CS231n's BatchNormalization notebook. Line: mean "
                "over seeds; band: min-max. A diverged member (non-finite loss) is left out of the loss panel.",
    )]
