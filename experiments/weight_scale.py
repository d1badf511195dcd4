"""Claims and plots of the weight-scale study (CS231n "BN and initialization", anchors-results §1.4, §10)."""

from __future__ import annotations

import math

import numpy as np

from bnjax.run.report import Claim, fmt, loss_tail, plot_metric_vs_axis

SMALL = 1e-3  # "small scales": the baseline is stuck at chance up to here on MNIST-1D (anchors §10)
LEARNS = 0.25  # best val accuracy that counts as learning (chance is 0.10; anchors: BN .34-.41 up to ws 0.1)
BLOWUP = 10 * math.log(10)  # a final training loss 10x that of a uniform guess


def _by_scale(v, fn):
    """{scale: per-seed values of fn(v, weight_scale=scale)}."""
    return {ws: fn(v, weight_scale=ws) for ws in v.values("weight_scale")}


def analyze(results):
    base, bn = results["baseline"], results["batchnorm"]
    b_val = _by_scale(base, lambda v, **w: v.best("val_acc", **w))
    n_val = _by_scale(bn, lambda v, **w: v.best("val_acc", **w))
    b_tail = _by_scale(base, loss_tail)
    small = [ws for ws in b_val if ws <= SMALL]
    claims = []

    stuck = {ws: np.nanmean(b_val[ws]) for ws in small}
    claims.append(Claim(
        f"Without normalization the net does not learn at small scales: best val accuracy <= 0.15 (chance 0.10) "
        f"for every ws <= {SMALL:g}",
        bool(small) and all(x <= 0.15 for x in stuck.values()),
        "best val: " + ", ".join(f"ws {ws:.2g}: {x:.3f}" for ws, x in stuck.items())
        + f"; final loss at ws {small[0]:.2g}: {fmt(b_tail[small[0]])}" if small else "no scale <= 1e-3 in the sweep",
    ))

    top = max(b_tail)
    blown = [ws for ws, t in b_tail.items() if np.all(~np.isfinite(t) | (t > BLOWUP))]
    n_div = int(base.diverged().sum())
    claims.append(Claim(
        f"Without normalization the largest scale blows up: at ws = {top:g} the training loss ends non-finite or "
        f"above 10 ln 10 = {BLOWUP:.1f} for every seed (diverged members are reported, the others train on)",
        top in blown,
        f"final loss (mean of last 100 steps) at ws {top:g}: {fmt(b_tail[top], 1)}; scales that blow up: "
        f"{', '.join(f'{ws:.2g}' for ws in blown) or 'none'}; members with a non-finite loss: {n_div}/"
        f"{base.num_members}",
    ))

    learn_range = [ws for ws in n_val if ws <= 0.1]
    worst = min(learn_range, key=lambda ws: np.nanmean(n_val[ws]))
    claims.append(Claim(
        f"With BN the net learns at every scale from 1e-4 to 0.1: best val accuracy >= {LEARNS} at each",
        all(np.nanmean(n_val[ws]) >= LEARNS for ws in learn_range),
        f"lowest BN best val over ws <= 0.1: {fmt(n_val[worst])} at ws {worst:.2g}; "
        f"BN at ws 1: {fmt(n_val[max(n_val)])}",
    ))

    gaps = {ws: np.nanmean(n_val[ws]) - np.nanmean(b_val[ws]) for ws in small}
    claims.append(Claim(
        f"At small scales (ws <= {SMALL:g}) BN beats the baseline by >= 0.10 best val accuracy "
        f"(anchors: +0.10 to +0.15 on CIFAR-10)",
        bool(gaps) and all(g >= 0.10 for g in gaps.values()),
        "BN - baseline best val: " + ", ".join(f"ws {ws:.2g}: {g:+.3f}" for ws, g in gaps.items()),
    ))
    return claims


def notes(results):
    base, bn = results["baseline"], results["batchnorm"]
    out = []
    for v in (base, bn):
        val = {ws: np.nanmean(v.best("val_acc", weight_scale=ws)) for ws in v.values("weight_scale")}
        best = max(val, key=val.get)
        out.append(f"{v.name}: peak best val accuracy {val[best]:.3f} at ws {best:.3g} "
                   f"(CIFAR-10: baseline .31 at ws ~5e-2, BN .32-.33 at ~2e-2)")
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
