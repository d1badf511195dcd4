"""Claims and plots of the dropout study (CS231n Dropout.ipynb regularization experiment, anchors §1.7, §10)."""

from __future__ import annotations

from bnjax.run.report import Claim, fmt, plot_metric_vs_axis

VAL_GAIN = 0.03  # anchors §10 measured +0.05 (keep 0.5) for 2 x 500 in the overfitting regime


def _gap(v, rate):
    return v.final("train_acc", dropout=rate) - v.final("val_acc", dropout=rate)


def analyze(results):
    claims = []
    for v in results:
        rates = v.values("dropout")
        lo, hi = min(rates), max(rates)
        g0, g1 = _gap(v, lo), _gap(v, hi)
        claims.append(Claim(
            f"{v.name}: dropout shrinks the train-val gap (keep {1 - hi:g} vs keep {1 - lo:g})",
            bool(g1.mean() < g0.mean()),
            f"final train - val: keep {1 - lo:g}: {fmt(g0)} (train {fmt(v.final('train_acc', dropout=lo))}), "
            f"keep {1 - hi:g}: {fmt(g1)} (train {fmt(v.final('train_acc', dropout=hi))})",
        ))
    if "overfit_2x500" in results:
        v = results["overfit_2x500"]
        base, half = v.final("val_acc", dropout=0.0), v.final("val_acc", dropout=0.5)
        claims.append(Claim(
            f"In the overfitting regime (2 x 500, lr 1e-3, 150 epochs) dropout with keep 0.5 raises final validation "
            f"accuracy by >= {VAL_GAIN} (anchors §10: .334 -> .385)",
            bool(half.mean() - base.mean() >= VAL_GAIN),
            f"final val keep 1: {fmt(base)}, keep 0.5: {fmt(half)} (change {half.mean() - base.mean():+.3f})",
        ))
    return claims


def notes(results):
    out = []
    for v in results:
        rates = v.values("dropout")
        base = v.final("val_acc", dropout=0.0).mean() if 0.0 in rates else float("nan")
        parts = []
        for r in rates:
            if r == 0.0:
                continue
            d = v.final("val_acc", dropout=r).mean() - base
            parts.append(f"keep {1 - r:g}: {d:+.3f}")
        verdict = "improves" if any(v.final("val_acc", dropout=r).mean() - base > 0.01 for r in rates if r) else \
            "does not improve (no keep gains > 0.01)"
        out.append(f"{v.name}: dropout {verdict} final validation accuracy over keep 1 ({base:.3f}): "
                   + ", ".join(parts) + f"; final train at keep 1: {fmt(v.final('train_acc', dropout=0.0))}")
    return out


def plots(results, out_dir):
    return [plot_metric_vs_axis(
        results, "dropout", [("train_acc", "final train accuracy"), ("val_acc", "final val accuracy")],
        out_dir, "dropout.png", x_transform=lambda d: 1 - d, xlabel="keep probability (1 - drop rate)",
        caption="Final training (eval mode, all 500 examples) and validation accuracy against the keep "
                "probability, per setup. Line: mean over seeds; band: min-max.",
    )]
