"""Claims and plots of the dropout/BN variance-shift study (Li et al. 2019; anchors-results §5)."""

from __future__ import annotations

import numpy as np

from bnjax.run.report import Claim, fmt, save_figure


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
    before, after = results["before_bn"], results["after_bn"]
    rates = [r for r in before.values("dropout") if r > 0]
    claims = []
    idx = _behind_dropout(before)
    shift = {r: _ratios(before, "ratio_eval_to_running", r)[:, idx].mean() for r in rates}
    ok = all(x < 1 for x in shift.values()) and bool(np.all(np.diff([shift[r] for r in sorted(rates)]) < 0))
    claims.append(Claim(
        "Dropout before BN: the eval-mode variance of a BN input is smaller than BN's running variance, and the "
        "more so the lower the keep probability (Li et al.: ratio = keep for zero-mean inputs right after dropout)",
        ok,
        "eval/running variance, BN layers behind dropout, mean over layers and seeds: "
        + ", ".join(f"keep {1 - r:g}: {shift[r]:.3f}" for r in sorted(rates))
        + f"; without dropout: {_ratios(before, 'ratio_eval_to_running', 0.0)[:, idx].mean():.3f}",
    ))
    flat = np.concatenate([_ratios(after, "ratio_eval_to_running", r).ravel() for r in after.values("dropout")])
    claims.append(Claim(
        "Dropout only after the last BN: no BN layer sees dropout, so eval/running variance stays within 10% of 1",
        bool(np.all(np.abs(flat - 1) < 0.10)),
        f"eval/running variance over all after_bn members and layers: {flat.min():.3f} to {flat.max():.3f}",
    ))
    on = np.concatenate([_ratios(before, "ratio_dropout_to_running", r)[:, idx].ravel() for r in rates])
    claims.append(Claim(
        "The running variance is the train-mode (dropout on) variance: recomputed with dropout on, the ratio to the "
        "running variance is within 10% of 1 -- the shift comes from switching dropout off",
        bool(np.all(np.abs(on - 1) < 0.10)),
        f"dropout-on/running variance, before_bn layers behind dropout: {on.min():.3f} to {on.max():.3f}",
    ))
    half = 0.5 if 0.5 in rates else rates[len(rates) // 2]
    gain_b = (before.final("val_acc_precise", dropout=half) - before.final("val_acc", dropout=half))
    gain_a = (after.final("val_acc_precise", dropout=half) - after.final("val_acc", dropout=half))
    claims.append(Claim(
        f"Recomputing BN statistics with dropout off (Li et al.'s remedy c) raises the final val accuracy of "
        f"dropout-before-BN at keep {1 - half:g}, by more than it does for dropout after the last BN",
        bool(gain_b.mean() > 0 and gain_b.mean() > gain_a.mean()),
        f"val acc at keep {1 - half:g}, running -> recomputed: before_bn {fmt(before.final('val_acc', dropout=half))} "
        f"-> {fmt(before.final('val_acc_precise', dropout=half))} (gain {fmt(gain_b)}); after_bn "
        f"{fmt(after.final('val_acc', dropout=half))} -> {fmt(after.final('val_acc_precise', dropout=half))} "
        f"(gain {fmt(gain_a)})",
    ))
    b, a = before.final("val_acc", dropout=half), after.final("val_acc", dropout=half)
    claims.append(Claim(
        f"With running statistics, dropout before BN costs validation accuracy against dropout after the last BN "
        f"(keep {1 - half:g}; Li et al.: DenseNet 77.4% -> 68.6%)",
        bool(b.mean() < a.mean()),
        f"final val: before_bn {fmt(b)} vs after_bn {fmt(a)}; before_bn also drops units in more layers, so part "
        f"of the cost is extra noise rather than the shift (recomputed statistics: "
        f"{fmt(before.final('val_acc_precise', dropout=half))} vs {fmt(after.final('val_acc_precise', dropout=half))})",
    ))
    return claims


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
