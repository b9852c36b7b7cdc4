"""PNG plots of a head run: training curves, confusion matrices, ROC and PR curves, reliability diagram.

Figures are built with matplotlib's object API (no pyplot), so plotting never
touches a display or global state; matplotlib is imported only when plotting.
"""

import numpy as np

from pipeline.data.splits import CLASS_NAMES
from pipeline.files import write_atomic


def _save(fig, path):
    """Through a temp file and a rename, so a symlink at `path` is replaced, never written through."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def _figure(columns=1):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5 * columns, 4), layout="constrained")
    return fig, fig.subplots(1, columns, squeeze=False)[0]


def plot_training_curves(history, best_epoch, path):
    """Train and validation loss per epoch (left) and the validation metrics (right)."""
    fig, (loss_ax, metric_ax) = _figure(2)
    epochs = [row["epoch"] for row in history]
    for key in ("train_loss", "val_loss"):
        loss_ax.plot(epochs, [row[key] for row in history], marker="o", label=key)
    for key in [k for k in history[0] if k.startswith("val_") and k != "val_loss"]:
        values = [np.nan if row[key] is None else row[key] for row in history]
        metric_ax.plot(epochs, values, marker="o", label=key)
    for ax, title in ((loss_ax, "loss (class-weighted)"), (metric_ax, "validation metrics")):
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="epoch", title=title)
        ax.legend()
    _save(fig, path)


def plot_confusion_matrices(metrics, path):
    """One matrix per split at the default threshold 0.5; rows are true classes."""
    fig, axes = _figure(len(metrics))
    for ax, (split, values) in zip(axes, metrics.items()):
        matrix = np.array(values["confusion_matrix"])
        ax.imshow(matrix, cmap="Blues")
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
               xlabel="predicted", ylabel="true", title=f"{split} (threshold 0.5)")
    _save(fig, path)


def plot_roc_pr(predictions, roc_path, pr_path):
    """ROC and precision-recall curves of each split, real as the positive class."""
    from sklearn.metrics import precision_recall_curve, roc_curve
    roc_fig, (roc_ax,) = _figure()
    pr_fig, (pr_ax,) = _figure()
    for split, rows in predictions.items():
        labels, prob = rows["label"], rows["prob_real"]
        if len(np.unique(labels)) < 2:
            continue  # a one-class split has no curve
        fpr, tpr, _ = roc_curve(labels, prob)
        precision, recall, _ = precision_recall_curve(labels, prob)
        roc_ax.plot(fpr, tpr, label=split)
        pr_ax.plot(recall, precision, label=split)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate (real)", title="ROC")
    pr_ax.set(xlabel="recall (real)", ylabel="precision (real)", title="precision-recall")
    for fig, ax, path in ((roc_fig, roc_ax, roc_path), (pr_fig, pr_ax, pr_path)):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        _save(fig, path)


def plot_ablation(runs, path, metric="test_f1_macro"):
    """One row per variant: each seed's `metric` as a dot and the mean as a bar (an `ablate` table's runs)."""
    variants = list(dict.fromkeys(zip(runs["modalities"], runs["fusion"])))
    fig, (ax,) = _figure()
    fig.set_size_inches(6, 0.5 * len(variants) + 1.5)
    for y, (modalities, fusion) in enumerate(variants):
        values = runs[(runs["modalities"] == modalities) & (runs["fusion"] == fusion)][metric].to_numpy(float)
        ax.barh(y, values.mean(), color="#c6dbef", height=0.6)
        ax.scatter(values, np.full(values.shape, y), color="#08519c", zorder=3, s=18)
    ax.set_yticks(range(len(variants)), [m if f == "-" else f"{m} {f}" for m, f in variants])
    ax.invert_yaxis()
    low = float(runs[metric].min())
    ax.set_xlim(max(0.0, low - 0.05), min(1.0, float(runs[metric].max()) + 0.02))
    ax.set(xlabel=f"{metric} (bar: mean over seeds; dots: seeds)", title="ablation")
    _save(fig, path)


def plot_reliability(predictions, path):
    """Reliability diagram: accuracy against mean confidence per confidence bin (15 bins), per split."""
    from pipeline.train.calibration import expected_calibration_error, reliability_bins

    fig, (ax,) = _figure()
    for split, rows in predictions.items():
        confidence, accuracy, _ = reliability_bins(rows["label"], rows["prob_real"])
        ece = expected_calibration_error(rows["label"], rows["prob_real"])
        ax.plot(confidence, accuracy, marker="o", label=f"{split} (ECE {ece:.3f})")
    ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="confidence (predicted class's probability)", ylabel="accuracy", title="reliability",
           xlim=(0.48, 1.02))
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    _save(fig, path)
