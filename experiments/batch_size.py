"""Claims and plots of the batch-size study (CS231n BN/LN batch-size experiments, anchors-results §1.5-1.6)."""

from __future__ import annotations

import numpy as np

from bnjax.run.report import Claim, fmt, save_figure


def _family(results, prefix):
    """{batch size: variant} for the variants named ``<prefix>_bs<N>``, sorted by batch size."""
    out = {}
    for v in results:
        if v.name.startswith(prefix + "_bs"):
            out[int(v.spec["train"]["batch_size"])] = v
    return dict(sorted(out.items()))


def analyze(results):
    bn, ln = _family(results, "batchnorm"), _family(results, "layernorm")
    base = results["baseline_bs5"]
    bn_tr = {bs: v.final("train_acc") for bs, v in bn.items()}
    ln_tr = {bs: v.final("train_acc") for bs, v in ln.items()}
    means = [bn_tr[bs].mean() for bs in bn_tr]
    claims = [Claim(
        "BN's final training accuracy rises with the batch size",
        bool(np.all(np.diff(means) > 0)),
        "BN final train: " + ", ".join(f"bs {bs}: {fmt(a)}" for bs, a in bn_tr.items())
        + " (MNIST-1D scratch: .44/.63/.84; CIFAR-10: .46/.65/.86)",
    )]
    smallest = min(bn_tr)
    b = base.final("train_acc")
    claims.append(Claim(
        f"BN at batch {smallest} is no better than no normalization at batch {smallest} (final training accuracy)",
        bool(bn_tr[smallest].mean() <= b.mean()),
        f"BN bs {smallest}: {fmt(bn_tr[smallest])} vs none bs {smallest}: {fmt(b)}; val: "
        f"{fmt(bn[smallest].final('val_acc'))} vs {fmt(base.final('val_acc'))} (CIFAR-10: .46 vs .62; MNIST-1D "
        f"scratch: .44 vs .37)",
    ))
    spread = lambda d: max(a.mean() for a in d.values()) - min(a.mean() for a in d.values())
    claims.append(Claim(
        "LayerNorm's final training accuracy depends less on the batch size than BN's (smaller max-min spread)",
        bool(spread(ln_tr) < spread(bn_tr)),
        f"spread LN {spread(ln_tr):.3f} vs BN {spread(bn_tr):.3f}; LN final train: "
        + ", ".join(f"bs {bs}: {fmt(a)}" for bs, a in ln_tr.items()) + " (CIFAR-10: ~.20 vs ~.40)",
    ))
    claims.append(Claim(
        f"LayerNorm at batch {smallest} is at or above no normalization at batch {smallest} (final training accuracy)",
        bool(ln_tr[smallest].mean() >= b.mean()),
        f"LN bs {smallest}: {fmt(ln_tr[smallest])} vs none: {fmt(b)} (CIFAR-10: .65-.70 vs .61-.65)",
    ))
    return claims


def notes(results):
    out = []
    for prefix in ("batchnorm", "layernorm"):
        fam = _family(results, prefix)
        out.append(f"{prefix} final val accuracy: " + ", ".join(f"bs {bs}: {fmt(v.final('val_acc'))}"
                                                              for bs, v in fam.items()))
    out.append(f"baseline bs 5 final val accuracy: {fmt(results['baseline_bs5'].final('val_acc'))}")
    return out


def plots(results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    base = results["baseline_bs5"]
    for ax, metric in zip(axes, ("train_acc", "val_acc")):
        for prefix in ("batchnorm", "layernorm"):
            fam = _family(results, prefix)
            xs = list(fam)
            vals = [v.final(metric) for v in fam.values()]
            line, = ax.plot(xs, [a.mean() for a in vals], marker="o", label=prefix)
            ax.fill_between(xs, [a.min() for a in vals], [a.max() for a in vals], color=line.get_color(), alpha=0.15)
        b = base.final(metric)
        ax.errorbar([5], [b.mean()], yerr=[[b.mean() - b.min()], [b.max() - b.mean()]], fmt="s", color="k",
                    label="no norm, bs 5")
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 50], labels=["5", "10", "50"])
        ax.set_title(f"final {metric.replace('_', ' ')}")
    return [save_figure(fig, axes, out_dir, "batch_size.png",
                        "Final training (eval mode) and validation accuracy after 10 epochs against the batch size; "
                        "band and error bar: min-max over seeds.", xlabel="batch size", legend_fontsize=8)]
