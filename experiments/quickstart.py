"""Claims and plots of the quick tour: no norm vs batch norm vs layer norm, each with and without dropout.

Sources (experiments/REFERENCES.md, "quickstart"): CS231n BatchNormalization.ipynb, "Batch normalization for deep
networks" (CIFAR-10); Ioffe & Szegedy 2015, Fig. 1(a); Ba, Kiros & Hinton 2016, §6.7; CS231n Dropout.ipynb,
"Regularization experiment"; Srivastava et al. 2014.
"""

from __future__ import annotations

from bnjax.claims import Claim, Expect, every, exceeds, expectations, paired
from bnjax.run.report import brief, fmt, plot_metric_vs_axis

SOURCES_SAY = "BN, and LN, train faster than no norm; dropout shrinks the train-val gap"

# Per dataset: the least gap each claim must show (every seed and the 95% interval over seeds must clear it). The
# MNIST-1D and Fashion-MNIST numbers sit well inside what this project measures (REFERENCES.md); any other
# dataset is judged on the direction alone.
EXPECT = {
    "default": {"bn_train": Expect(0.0), "bn_val": Expect(0.0), "ln_train": Expect(0.0), "dropout_gap": Expect(0.0)},
    "mnist1d": {"bn_train": Expect(0.30), "bn_val": Expect(0.10)},
    "fashion_mnist": {"bn_train": Expect(0.10), "bn_val": Expect(0.04)},
}


def analyze(results):
    exp = expectations(EXPECT, results)
    none, bn, ln = results["none"], results["batchnorm"], results["layernorm"]
    nodrop = {"dropout": 0.0}
    claims = []
    for key, metric, label, source in (
        ("bn_train", "train_acc", "training", "CS231n BatchNormalization.ipynb, CIFAR-10: .78 vs .72"),
        ("bn_val", "val_acc", "validation", "Ioffe & Szegedy 2015 Fig. 1a, MNIST: higher test accuracy throughout"),
    ):
        gap = paired(bn, bn.final(metric, **nodrop), none, none.final(metric, **nodrop), where_a=nodrop,
                     where_b=nodrop)
        claims.append(Claim.decide(
            f"Batch norm ends ahead of no normalization in {label} accuracy, no dropout ({source})",
            exceeds(gap, exp[key].threshold, label="BN - none, per seed"), exp[key], source=exp.source(key),
            evidence=f"final {label}: BN {fmt(bn.final(metric, **nodrop))} vs none {fmt(none.final(metric, **nodrop))}",
        ))
    gap = paired(ln, ln.final("train_acc", **nodrop), none, none.final("train_acc", **nodrop), where_a=nodrop,
                 where_b=nodrop)
    claims.append(Claim.decide(
        "Layer norm ends ahead of no normalization in training accuracy, no dropout (Ba et al. 2016 §6.7: faster "
        "than no normalization)",
        exceeds(gap, exp["ln_train"].threshold, label="LN - none, per seed"), exp["ln_train"],
        source=exp.source("ln_train"),
        evidence=f"final train: LN {fmt(ln.final('train_acc', **nodrop))} vs none "
                 f"{fmt(none.final('train_acc', **nodrop))} vs BN {fmt(bn.final('train_acc', **nodrop))}",
    ))
    findings = []
    for v in results:
        rates = v.values("dropout")
        lo, hi = {"dropout": min(rates)}, {"dropout": max(rates)}
        g0 = v.final("train_acc", **lo) - v.final("val_acc", **lo)
        g1 = v.final("train_acc", **hi) - v.final("val_acc", **hi)
        findings.append(exceeds(paired(v, g0, v, g1, where_a=lo, where_b=hi), exp["dropout_gap"].threshold,
                                label=f"{v.name}: gap without - with"))
    claims.append(Claim.decide(
        f"Dropout (rate {max(results['none'].values('dropout')):g}) shrinks the train - val accuracy gap for every "
        "normalization (CS231n Dropout.ipynb; Srivastava et al. 2014)",
        every(findings), exp["dropout_gap"], source=exp.source("dropout_gap"),
    ))
    return claims


def key_numbers(results):
    """Final train/val accuracy without dropout: BN vs none, LN."""
    def tv(name):
        v = results[name]
        return f"{brief(v.final('train_acc', dropout=0.0))}/{brief(v.final('val_acc', dropout=0.0))}"

    return f"BN {tv('batchnorm')} vs none {tv('none')}, LN {tv('layernorm')} (train/val)"


def notes(results):
    out = []
    for v in results:
        a, b = v.final("val_acc", dropout=0.0), v.final("val_acc", dropout=max(v.values("dropout")))
        out.append(f"{v.name}: final val accuracy without dropout {fmt(a)}, with {fmt(b)} "
                   f"({'higher' if b.mean() > a.mean() else 'not higher'} with dropout, mean over seeds)")
    return out


def plots(results, out_dir):
    return [plot_metric_vs_axis(
        results, "dropout", [("train_acc", "final train accuracy"), ("val_acc", "final val accuracy")],
        out_dir, "dropout.png", xlabel="drop rate",
        caption="Final training (eval mode) and validation accuracy with and without dropout, per normalization. "
                "Line: mean over seeds; band: min-max.",
    )]
