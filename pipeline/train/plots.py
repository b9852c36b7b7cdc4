"""PNG plots of a head run: training curves, confusion matrices, ROC and PR curves, reliability diagram.

With K > 2 classes the confusion matrices are K x K (decided by the argmax), the ROC and PR curves are
one-vs-rest, one curve per class on test, and the reliability diagram bins the top probability.

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


def plot_confusion_matrices(metrics, path, class_names=CLASS_NAMES):
    """One matrix per split at the default threshold 0.5 (K > 2: the argmax); rows are true classes."""
    metrics = {split: values for split, values in metrics.items() if isinstance(values, dict)}
    ticks, decided = list(range(len(class_names))), "threshold 0.5" if len(class_names) == 2 else "argmax"
    fig, axes = _figure(len(metrics))
    if len(class_names) > 3:
        fig.set_size_inches(5 * len(metrics) + len(class_names) / 2, 4 + len(class_names) / 3)
    for ax, (split, values) in zip(axes, metrics.items()):
        matrix = np.array(values["confusion_matrix"])
        ax.imshow(matrix, cmap="Blues")
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title=f"{split} ({decided})")
        ax.set_xticklabels(class_names, rotation=45 if len(class_names) > 2 else 0, ha="right" if
                           len(class_names) > 2 else "center")
        ax.set_yticklabels(class_names)
    _save(fig, path)


def _curves(predictions, class_names):
    """(curve label, 0/1 truth, score) per curve: each split, real as the positive class; for K > 2 one
    curve per class of the test split, that class against the rest."""
    if len(class_names) == 2:
        return [(split, np.asarray(rows["label"]), rows["prob_real"]) for split, rows in predictions.items()]
    rows = predictions["test"]
    return [(name, (np.asarray(rows["label"]) == index).astype(int), rows[f"prob_{name}"])
            for index, name in enumerate(class_names)]


def plot_roc_pr(predictions, roc_path, pr_path, class_names=CLASS_NAMES):
    """ROC and precision-recall curves of each split, real as the positive class (K > 2: one-vs-rest on test)."""
    from sklearn.metrics import precision_recall_curve, roc_curve
    roc_fig, (roc_ax,) = _figure()
    pr_fig, (pr_ax,) = _figure()
    for label, truth, prob in _curves(predictions, class_names):
        if len(np.unique(truth)) < 2:
            continue  # a one-class split has no curve
        fpr, tpr, _ = roc_curve(truth, prob)
        precision, recall, _ = precision_recall_curve(truth, prob)
        roc_ax.plot(fpr, tpr, label=label)
        pr_ax.plot(recall, precision, label=label)
    positive, what = ("real", "") if len(class_names) == 2 else ("the class", ", test, one-vs-rest")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel=f"true positive rate ({positive})", title=f"ROC{what}")
    pr_ax.set(xlabel=f"recall ({positive})", ylabel=f"precision ({positive})", title=f"precision-recall{what}")
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


def plot_reliability(predictions, path, class_names=CLASS_NAMES):
    """Reliability diagram: accuracy against mean confidence per confidence bin (15 bins), per split."""
    from pipeline.train.calibration import expected_calibration_error, reliability_bins
    from pipeline.train.multiclass import top_label_ece, top_label_reliability

    fig, (ax,) = _figure()
    for split, rows in predictions.items():
        if len(class_names) == 2:
            confidence, accuracy, _ = reliability_bins(rows["label"], rows["prob_real"])
            ece = expected_calibration_error(rows["label"], rows["prob_real"])
        else:
            probs = np.column_stack([rows[f"prob_{name}"] for name in class_names])
            confidence, accuracy, _ = top_label_reliability(rows["label"], probs)
            ece = top_label_ece(rows["label"], probs)
        ax.plot(confidence, accuracy, marker="o", label=f"{split} (ECE {ece:.3f})")
    low = 1 / len(class_names)  # the top probability is at least 1/K
    ax.plot([low, 1], [low, 1], color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="confidence (predicted class's probability)", ylabel="accuracy", title="reliability",
           xlim=(low - 0.02, 1.02))
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    _save(fig, path)
