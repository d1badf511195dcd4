"""Claims and plots of the dropout study (CS231n Dropout.ipynb, "Regularization experiment"; Srivastava et al.
2014). Sources and per-dataset numbers: experiments/REFERENCES.md, "dropout"."""

from __future__ import annotations

from bnjax.claims import Claim, Expect, every, exceeds, expectations, paired, within
from bnjax.run.report import brief, fmt, plot_metric_vs_axis

SOURCES_SAY = "dropout shrinks the train-val gap; raises val when overfitting"

_UNDERFITS = ("the notebook's setup (1 x 500, lr 5e-4, 25 epochs) underfits MNIST-1D's 40 features (final train "
              "~.44 at keep 1, against .99 on CIFAR-10), so there is no overfitting for dropout to cure")
_SMALL = ("Srivastava et al. 2014 (§7.4, Fig. 10): with 100 or 500 training examples dropout brings no gain, the net "
          "overfits even with dropout's noise; on Fashion-MNIST the 150-epoch nets fit all 500 images (train 1.0) "
          "at every keep down to 0.25")
_GENERALISES = ("the notebook's net already generalises on Fashion-MNIST (val ~.79 at train ~.996): dropout lowers "
                "training accuracy but leaves val accuracy where it was")
NO_EFFECT = 0.03  # a change of val accuracy or gap whose 95% interval lies within ±0.03 counts as none

# Per dataset: "overfit_gain" is the least val gain of keep 0.5 over keep 1 in the overfitting regime (2 x 500,
# 150 epochs); "notebook_gain" the same for the notebook's own setup at its lowest keep (CIFAR-10: +.00 to +.03).
EXPECT = {
    "default": {"gap": Expect(0.0), "overfit_gain": Expect(0.0), "notebook_gain": Expect(0.0)},
    "mnist1d": {"overfit_gain": Expect(0.01), "notebook_gain": Expect(0.0, differs="CIFAR-10", why=_UNDERFITS)},
    "fashion_mnist": {"gap": Expect(0.0, differs="CIFAR-10", why=_SMALL),
                      "notebook_gain": Expect(0.0, differs="CIFAR-10", why=_GENERALISES),
                      "overfit_gain": Expect(0.01, differs="MNIST", why=_SMALL)},
}


def _gap(v, rate):
    return v.final("train_acc", dropout=rate) - v.final("val_acc", dropout=rate)


def _val_gain(v, rate):
    """(S,) seed-paired final val accuracy at drop rate ``rate`` minus at 0 (keep 1)."""
    w, w0 = {"dropout": rate}, {"dropout": 0.0}
    return paired(v, v.final("val_acc", **w), v, v.final("val_acc", **w0), where_a=w, where_b=w0)


def analyze(results):
    exp = expectations(EXPECT, results)
    claims = []
    findings, texts, still = [], [], []
    for v in results:
        rates = v.values("dropout")
        lo, hi = min(rates), max(rates)
        d = paired(v, _gap(v, lo), v, _gap(v, hi), where_a={"dropout": lo}, where_b={"dropout": hi})
        findings.append(exceeds(d, exp["gap"].threshold, label=f"{v.name}: gap keep {1 - lo:g} - gap keep {1 - hi:g}"))
        texts.append(f"{v.name}: {fmt(_gap(v, lo))} -> {fmt(_gap(v, hi))}")
        if v.name.startswith("overfit"):
            still.append(within(d, NO_EFFECT, digits=3, label=f"{v.name}: gap change"))
    claims.append(Claim.decide(
        "Dropout shrinks the train - val accuracy gap in every setup (lowest keep vs keep 1), seed by seed "
        "(Srivastava et al. 2014; CS231n Dropout.ipynb, CIFAR-10: ~.69 -> ~.59 at keep 0.25)",
        every(findings), exp["gap"], source=exp.source("gap"),
        evidence="gap keep 1 -> lowest keep: " + "; ".join(texts),
        differs_if=every(still) if still else None,
    ))
    if "cs231n_1x500" in results:
        v = results["cs231n_1x500"]
        r = max(v.values("dropout"))
        gain = _val_gain(v, r)
        claims.append(Claim.decide(
            f"In the notebook's own setup (1 x 500, lr 5e-4, 25 epochs) dropout with keep {1 - r:g} raises final val "
            "accuracy over keep 1, seed by seed (CS231n Dropout.ipynb, CIFAR-10: .30-.31 -> .30-.33)",
            exceeds(gain, exp["notebook_gain"].threshold, label=f"keep {1 - r:g} - keep 1"),
            exp["notebook_gain"], source=exp.source("notebook_gain"),
            evidence=f"final train at keep 1: {fmt(v.final('train_acc', dropout=0.0))}, at keep {1 - r:g}: "
                     f"{fmt(v.final('train_acc', dropout=r))}",
            differs_if=within(gain, NO_EFFECT, digits=3, label="val change"),
        ))
    if "overfit_2x500" in results:
        v = results["overfit_2x500"]
        t = exp["overfit_gain"].threshold
        gain = _val_gain(v, 0.5)
        claims.append(Claim.decide(
            "In an overfitting regime (2 x 500, lr 1e-3, 150 epochs on 500 examples) dropout with keep 0.5 raises "
            f"final val accuracy over keep 1 by more than {t:g}, seed by seed (Srivastava et al. 2014, Table 2: MNIST "
            "test error 1.60% -> 1.25%)",
            exceeds(gain, t, label="keep 0.5 - keep 1"), exp["overfit_gain"],
            differs_if=within(gain, NO_EFFECT, digits=3, label="val change"),
            source=exp.source("overfit_gain"),
            evidence=f"final val keep 1: {fmt(v.final('val_acc', dropout=0.0))}, keep 0.5: "
                     f"{fmt(v.final('val_acc', dropout=0.5))}; final train keep 1: "
                     f"{fmt(v.final('train_acc', dropout=0.0))}",
        ))
    return claims


def key_numbers(results):
    """Train - val gap at keep 1 -> the lowest keep per setup; val accuracy keep 1 -> 0.5 when overfitting; the
    notebook setup's val change and training accuracy."""
    gaps = []
    for v in results:
        rates = v.values("dropout")
        gaps.append(f"{brief(_gap(v, min(rates)))} -> {brief(_gap(v, max(rates)))} ({v.name})")
    out = "train - val gap " + ", ".join(gaps)
    if "overfit_2x500" in results:
        v = results["overfit_2x500"]
        out += (f"; 2 x 500 val {brief(v.final('val_acc', dropout=0.0))} -> {brief(v.final('val_acc', dropout=0.5))} "
                f"at keep .5")
    if "cs231n_1x500" in results:
        v = results["cs231n_1x500"]
        out += (f"; notebook setting: train {brief(v.final('train_acc', dropout=0.0))} at keep 1, val "
                f"{brief(_val_gain(v, max(v.values('dropout'))), signed=True)} with dropout")
    return out


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
