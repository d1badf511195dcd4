"""Claims and plots of the quick tour: BN vs none vs LN, with and without dropout (anchors-results §1.3, §10)."""

from __future__ import annotations

from bnjax.run.report import Claim, fmt, plot_metric_vs_axis


def analyze(results):
    none, bn, ln = results["none"], results["batchnorm"], results["layernorm"]
    claims = []
    for metric, label, need in (("train_acc", "training", 0.30), ("val_acc", "validation", 0.10)):
        b, n = bn.final(metric, dropout=0.0), none.final(metric, dropout=0.0)
        claims.append(Claim(
            f"Batch norm ends >= {need:.2f} ahead of no normalization in {label} accuracy (no dropout; "
            f"anchors §10: BN .81/.44 vs none .33/.27)",
            bool(b.mean() - n.mean() >= need),
            f"final {label}: BN {fmt(b)} vs none {fmt(n)} (gap {b.mean() - n.mean():+.3f})",
        ))
    l, n = ln.final("train_acc", dropout=0.0), none.final("train_acc", dropout=0.0)
    claims.append(Claim(
        "Layer norm also trains faster than no normalization (final training accuracy, no dropout)",
        bool(l.mean() > n.mean()),
        f"final train: LN {fmt(l)} vs none {fmt(n)} vs BN {fmt(bn.final('train_acc', dropout=0.0))}",
    ))
    gaps = {}
    for v in results:
        g = {r: (v.final("train_acc", dropout=r) - v.final("val_acc", dropout=r)).mean() for r in v.values("dropout")}
        gaps[v.name] = (g[min(g)], g[max(g)])
    claims.append(Claim(
        "Dropout (rate 0.5) shrinks the train-val gap for every normalization",
        all(with_d < without for without, with_d in gaps.values()),
        "train - val gap without -> with dropout: "
        + ", ".join(f"{k}: {a:.3f} -> {b:.3f}" for k, (a, b) in gaps.items()),
    ))
    return claims


def notes(results):
    out = []
    for v in results:
        a, b = v.final("val_acc", dropout=0.0), v.final("val_acc", dropout=max(v.values("dropout")))
        out.append(f"{v.name}: final val accuracy without dropout {fmt(a)}, with {fmt(b)} "
                   f"({'higher' if b.mean() > a.mean() else 'not higher'} with dropout)")
    return out


def plots(results, out_dir):
    return [plot_metric_vs_axis(
        results, "dropout", [("train_acc", "final train accuracy"), ("val_acc", "final val accuracy")],
        out_dir, "dropout.png", xlabel="drop rate",
        caption="Final training (eval mode) and validation accuracy with and without dropout, per normalization. "
                "Line: mean over seeds; band: min-max.",
    )]
