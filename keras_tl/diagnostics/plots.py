"""The diagnostics' plots: probe accuracy, BN gap and Fréchet distance per stage (keras_tl.probe),
CKA and weight change per stage (keras_tl.probe --compare). Each reads the JSON it illustrates."""

from __future__ import annotations

import io
import os

from keras_tl import fs


def save_png(fig, path: str) -> None:
    """Lay ``fig`` out tightly, write it as a PNG at ``path`` (local or gs://) atomically, close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    fs.write_bytes(path, buf.getvalue())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _two_panels(stages, height: float):
    """A figure with two panels side by side, wide enough for ``stages`` on the x axis: (fig, axes, x)."""
    fig, axes = _plt().subplots(1, 2, figsize=(2.5 + 1.6 * len(stages), height), dpi=110)
    return fig, axes, list(range(len(stages)))


def _short(label: str) -> str:
    """A weights label for a legend: a file path becomes its file name."""
    label = os.path.basename(label) if os.sep in label else label
    return label if len(label) <= 28 else label[:27] + "…"


def plot_probe(probe: dict, path: str) -> None:
    """Accuracy per stage: one line per weights source, linear solid, kNN dashed, chance dotted."""
    plt = _plt()
    stages = probe["stages"]
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(stages), 3.6), dpi=110)
    x = list(range(len(stages)))
    for i, (label, r) in enumerate(probe["results"].items()):
        color = f"C{i}"
        short = _short(label)
        ax.plot(x, r["linear"], "-o", color=color, label=f"{short} linear")
        ax.plot(x, r["knn"], "--s", color=color, alpha=0.7, label=f"{short} kNN")
    ax.axhline(probe["chance"], color="grey", ls=":", lw=1, label="majority class")
    ax.set_xticks(x, stages)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("stage (pooled output)")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{probe['recipe']}: {probe['backbone']} per-stage probes", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    save_png(fig, path)


def plot_frechet(probe: dict, path: str) -> None:
    """Relative Fréchet distance target vs reference per stage, one line per weights source, floor dotted."""
    plt = _plt()
    stages = probe["stages"]
    x = list(range(len(stages)))
    fr = probe["frechet"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for i, (label, r) in enumerate(fr["results"].items()):
        scale = [d / rel if rel else float("nan") for d, rel in zip(r["distance"], r["relative"])]
        ax.plot(x, r["relative"], "-o", color=f"C{i}", label=f"{_short(label)}")
        ax.plot(x, [f / s for f, s in zip(r["floor"], scale)], ":", color=f"C{i}", label=f"{_short(label)} floor (split half)")
    ax.set_xticks(x, stages)
    ax.set_ylabel("Fréchet distance / (tr C_t + tr C_r)")
    ax.set_title(f"{probe['recipe']} vs {fr['reference']['recipe']}: feature-space distance per stage", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    save_png(fig, path)


def plot_bn_gap(probe: dict, path: str) -> None:
    """Per stage: mean symmetric KL (log scale) and mean normalised shift, per weights source."""
    stages = probe["stages"]
    fig, axes, x = _two_panels(stages, 3.4)
    for i, (label, g) in enumerate(probe["bn_gap"]["results"].items()):
        for ax, key in zip(axes, ("sym_kl", "mean_shift")):
            ys = [v if v is not None else float("nan") for v in g[key]]
            ax.plot(x, ys, "-o", color=f"C{i}", label=_short(label))
    axes[0].set_yscale("log")
    axes[0].set_ylabel("symmetric KL (mean over BN layers)")
    axes[1].set_ylabel("|mean shift| / running std")
    for ax in axes:
        ax.set_xticks(x, stages)
        ax.set_xlabel("stage")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{probe['recipe']}: data vs BN running statistics", fontsize=9)
    save_png(fig, path)


def plot_compare(cmp: dict, path: str) -> None:
    """Per stage: linear CKA initial vs fine-tuned (left) and the relative weight change (right)."""
    stages = cmp["stages"]
    fig, axes, x = _two_panels(stages, 3.2)
    axes[0].bar(x, cmp["cka"], color="C0")
    axes[0].set_ylim(0, 1.02)
    axes[0].set_ylabel("linear CKA (initial vs fine-tuned)")
    axes[1].bar(x, [v or 0.0 for v in cmp["relative_weight_change"]], color="C1")
    axes[1].set_ylabel("||θ−θ₀|| / ||θ₀||")
    for ax in axes:
        ax.set_xticks(x, stages)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{os.path.basename(os.path.normpath(cmp['run_dir']))}: what fine-tuning changed", fontsize=9)
    save_png(fig, path)
