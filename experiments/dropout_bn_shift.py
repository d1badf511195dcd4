"""Claims and plots of the dropout/BN variance-shift study (Li, Chen, Hu & Yang 2019, "Understanding the Disharmony
between Dropout and Batch Normalization by Variance Shift"). Sources and per-dataset numbers:
experiments/REFERENCES.md, "dropout_bn_shift"."""

from __future__ import annotations

import numpy as np

from bnjax.claims import Claim, Expect, every, exceeds, expectations, falls_below, paired, within
from bnjax.run.report import brief, fmt, save_figure

SOURCES_SAY = "dropout before BN shrinks eval variance (ratio ~ keep); recomputing statistics repairs it"

# Per dataset: "near_one" is how far from 1 a variance ratio may be and still count as "no shift" (mean over seeds).
EXPECT = {
    "default": {"shift": Expect(1.0), "near_one": Expect(0.10), "train_mode": Expect(0.10), "recompute": Expect(0.0),
                "cost": Expect(0.0)},
}


def post_train(trained):
    """Per member and BN layer: mean over features of (eval-mode variance) / (running variance), where the
    eval-mode variance is recomputed over 20 x 50 training examples with dropout off, and the same with dropout
    on at the member's own rate (what train mode saw)."""
    import jax

    from bnjax.train import recompute_batch_stats

    spec, cfg, data, res = trained.spec, trained.cfg, trained.data, trained.result
    x = data.x_train[: cfg.precise_bn_batches * cfg.batch_size]
    layers = sorted(res.batch_stats)
    off, on = [], []
    for k, member in enumerate(res.members):
        params = jax.tree.map(lambda a, k=k: a[k], res.params)
        stats = jax.tree.map(lambda a, k=k: a[k], res.batch_stats)
        s_off = recompute_batch_stats(spec, params, stats, x, batch_size=cfg.batch_size)
        s_on = recompute_batch_stats(spec, params, stats, x, batch_size=cfg.batch_size,
                                     dropout=float(member["dropout"]), key=jax.random.key(k))
        off.append([float(np.mean(np.asarray(s_off[l]["var"]) / np.asarray(stats[l]["var"]))) for l in layers])
        on.append([float(np.mean(np.asarray(s_on[l]["var"]) / np.asarray(stats[l]["var"]))) for l in layers])
    return {"layers": layers, "ratio_eval_to_running": off, "ratio_dropout_to_running": on}


def _ratios(v, key, rate):
    """(S, L) ratios of the members with drop rate ``rate``."""
    return np.asarray(v.extras[key])[v.mask(dropout=rate)]


def _behind_dropout(v):
    """Indices of the BN layers whose input has passed through a dropout layer."""
    layers = v.extras["layers"]
    if v.spec["model"]["dropout_layers"] == "all":
        return list(range(1, len(layers)))  # bn_0 sees the raw input; bn_i (i >= 1) follows dropout i-1
    return []


def analyze(results):
    exp = expectations(EXPECT, results)
    before, after = results["before_bn"], results["after_bn"]
    rates = sorted(r for r in before.values("dropout") if r > 0)
    idx = _behind_dropout(before)
    claims = []

    # (S,) per rate: the eval/running variance ratio, mean over the BN layers behind a dropout.
    ratio = {r: _ratios(before, "ratio_eval_to_running", r)[:, idx].mean(1) for r in rates}
    below = [falls_below(ratio[r], exp["shift"].threshold, label=f"keep {1 - r:g}") for r in rates]
    steps = [exceeds(paired(before, ratio[lo], before, ratio[hi], where_a={"dropout": lo}, where_b={"dropout": hi}),
                     0.0, label=f"keep {1 - lo:g} - keep {1 - hi:g}") for lo, hi in zip(rates, rates[1:])]
    claims.append(Claim.decide(
        "Dropout before BN: in eval mode a BN input's variance is smaller than BN's running variance, and the more "
        "so the lower the keep probability, seed by seed (Li et al. 2019: ratio = keep for zero-mean inputs right "
        "after dropout)",
        every(below + steps), exp["shift"],
        evidence=f"without dropout: {fmt(_ratios(before, 'ratio_eval_to_running', 0.0)[:, idx].mean(1))}",
    ))
    tol = exp["near_one"].threshold
    claims.append(Claim.decide(
        f"Dropout only after the last BN (Li et al.'s remedy a): no BN layer sees dropout, so eval/running variance "
        f"stays within {tol:g} of 1 (each layer and rate, mean over seeds)",
        every([within(_ratios(after, "ratio_eval_to_running", r)[:, j], tol, center=1.0, digits=3,
                      label=f"{after.extras['layers'][j]}, keep {1 - r:g}")
               for r in after.values("dropout") for j in range(len(after.extras["layers"]))],
              summary="eval/running variance over after_bn layers and rates: "
              + _range(np.concatenate([_ratios(after, "ratio_eval_to_running", r).ravel()
                                       for r in after.values("dropout")]))),
        exp["near_one"], source=exp.source("near_one"),
    ))
    tol = exp["train_mode"].threshold
    claims.append(Claim.decide(
        f"The running variance is the train-mode (dropout on) variance: recomputed with dropout on, its ratio to the "
        f"running variance stays within {tol:g} of 1 -- the shift comes from switching dropout off",
        every([within(_ratios(before, "ratio_dropout_to_running", r)[:, j], tol, center=1.0, digits=3,
                      label=f"{before.extras['layers'][j]}, keep {1 - r:g}")
               for r in rates for j in idx],
              summary="dropout-on/running variance, before_bn layers behind dropout: "
              + _range(np.concatenate([_ratios(before, "ratio_dropout_to_running", r)[:, idx].ravel()
                                       for r in rates]))),
        exp["train_mode"], source=exp.source("train_mode"),
    ))
    low = {"dropout": rates[-1]}  # the lowest keep: the largest shift
    gain_b = before.final("val_acc_precise", **low) - before.final("val_acc", **low)
    gain_a = after.final("val_acc_precise", **low) - after.final("val_acc", **low)
    claims.append(Claim.decide(
        f"Recomputing BN statistics with dropout off (Li et al.'s remedy c) raises the final val accuracy of "
        f"dropout-before-BN at keep {1 - rates[-1]:g} (the largest shift), and by more than it does for dropout "
        "after the last BN, seed by seed",
        every([exceeds(gain_b, exp["recompute"].threshold, label="before_bn gain"),
               exceeds(paired(before, gain_b, after, gain_a, where_a=low, where_b=low), 0.0,
                       label="gain before - after")]),
        exp["recompute"], source=exp.source("recompute"),
        evidence=f"val acc, running -> recomputed: before_bn {fmt(before.final('val_acc', **low))} -> "
                 f"{fmt(before.final('val_acc_precise', **low))}; after_bn {fmt(after.final('val_acc', **low))} -> "
                 f"{fmt(after.final('val_acc_precise', **low))}",
    ))
    half = 0.5 if 0.5 in rates else rates[len(rates) // 2]
    w = {"dropout": half}
    b, a = before.final("val_acc", **w), after.final("val_acc", **w)
    claims.append(Claim.decide(
        f"With running statistics, dropout before BN costs validation accuracy against dropout after the last BN, "
        f"seed by seed (keep {1 - half:g}; Li et al. 2019: DenseNet on CIFAR-100, 77.42% -> 68.55% with dropout 0.5)",
        exceeds(paired(after, a, before, b, where_a=w, where_b=w), exp["cost"].threshold, label="after - before"),
        exp["cost"], source=exp.source("cost"),
        evidence=f"final val: before_bn {fmt(b)} vs after_bn {fmt(a)}; before_bn also drops units in more layers, so "
                 f"part of the cost is extra noise rather than the shift (recomputed statistics: "
                 f"{fmt(before.final('val_acc_precise', **w))} vs {fmt(after.final('val_acc_precise', **w))})",
    ))
    return claims


def key_numbers(results):
    """Eval/running variance ratio per keep before BN and its range after the last BN; val accuracy at the lowest keep
    with running -> recomputed statistics."""
    before, after = results["before_bn"], results["after_bn"]
    rates = sorted(r for r in before.values("dropout") if r > 0)
    idx = _behind_dropout(before)
    ratios = "/".join(brief(_ratios(before, "ratio_eval_to_running", r)[:, idx].mean(1)) for r in rates)
    keeps = "/".join(f"{1 - r:g}" for r in rates)
    after_all = np.concatenate([_ratios(after, "ratio_eval_to_running", r).ravel() for r in after.values("dropout")])
    low = {"dropout": rates[-1]}
    return (f"ratio {ratios} at keep {keeps}, {_range(after_all)} after the last BN; val at keep {1 - rates[-1]:g}: "
            f"{brief(before.final('val_acc', **low), 3)} -> {brief(before.final('val_acc_precise', **low), 3)} "
            f"recomputed")


def _range(x):
    return f"{np.nanmin(x):.3f} to {np.nanmax(x):.3f}"


def notes(results):
    out = []
    for v in results:
        parts = []
        for r in v.values("dropout"):
            ratios = _ratios(v, "ratio_eval_to_running", r).mean(0)
            parts.append(f"keep {1 - r:g}: " + "/".join(f"{x:.2f}" for x in ratios))
        out.append(f"{v.name}: eval/running variance per BN layer ({', '.join(v.extras['layers'])}): "
                   + "; ".join(parts))
    for v in results:
        parts = [f"keep {1 - r:g}: {fmt(v.final('val_acc', dropout=r))} -> {fmt(v.final('val_acc_precise', dropout=r))}"
                 for r in v.values("dropout")]
        out.append(f"{v.name}: final val acc, running -> recomputed statistics: " + "; ".join(parts))
    return out


def plots(results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for v in results:
        rates = v.values("dropout")
        keep = [1 - r for r in rates]
        idx = _behind_dropout(v) or list(range(len(v.extras["layers"])))
        ratio = [_ratios(v, "ratio_eval_to_running", r)[:, idx].mean() for r in rates]
        axes[0].plot(keep, ratio, marker="o", label=f"{v.name} (layers {', '.join(v.extras['layers'][i] for i in idx)})")
        for metric, style in (("val_acc", "-"), ("val_acc_precise", "--")):
            axes[1].plot(keep, [v.final(metric, dropout=r).mean() for r in rates], style, marker="o",
                         label=f"{v.name}, {'recomputed' if 'precise' in metric else 'running'} stats")
    axes[0].plot([0.25, 1], [0.25, 1], "k:", lw=1, label="ratio = keep (Li et al., zero-mean input)")
    axes[0].set_title("eval-mode / running variance of BN inputs")
    axes[1].set_title("final val accuracy")
    return [save_figure(fig, axes, out_dir, "variance_shift.png",
                        "Left: variance of BN inputs in eval mode (recomputed, dropout off) over BN's running variance, "
                        "mean over the BN layers behind a dropout and seeds. Right: final validation accuracy with the "
                        "running statistics (solid) and with statistics recomputed with dropout off (dashed).",
                        xlabel="keep probability")]
