"""Train a fusion head on cached embeddings: a model-agnostic fit loop plus evaluation.

The features fit in memory, so an epoch is a seeded permutation sliced into
mini-batches (no DataLoader, no per-row Python). Early stopping keeps the best
validation epoch's weights; the decision threshold is tuned on validation only,
and test is scored once, with that model and that threshold.

`metrics[split]` top-level keys use the default threshold 0.5 (the argmax of
the logits); `metrics[split]["tuned"]` holds the same metrics at the threshold
tuned on validation (optimistic on val itself, honest on test). With K > 2
classes the head has K outputs, every metric is decided by the argmax and no
threshold is tuned (evaluate.py, multiclass.py).
"""

import time

import numpy as np
import torch

from pipeline.data.classes import class_names_of
from pipeline.data.splits import CLASS_NAMES, SPLITS
from pipeline.device import resolve_device
from pipeline.embed.cache import load_split, read_manifest
from pipeline.embed.labels import with_label_set
from pipeline.errors import UserError
from pipeline.model.head import FusionHead, drop_modalities
from pipeline.train.class_checks import check_classes
from pipeline.train.evaluate import evaluate, logits_of, scored, scored_k
from pipeline.train.features import feature_tensors, scale_features
from pipeline.train.losses import class_weights, weighted_cross_entropy
from pipeline.train.metrics import compute_metrics
from pipeline.train.multiclass import multiclass_metrics
from pipeline.train.run_folder import FitResult, HeadRun
from pipeline.train.run_warnings import run_warnings
from pipeline.train.threads import head_threads

__all__ = ["fit", "load_cached_splits", "logits_of", "predict", "to_features", "train_head"]


def load_cached_splits(cache_dir, names=SPLITS, label_column=None):
    """(manifest, {split: CachedSplit}) after checking that every split is there, non-empty and labelled 0..K-1.

    The labels are `label_column`'s label set (None: the one the cache's last embed used); the manifest returned
    describes that set (`label_column`, `classes`, class counts), see embed/labels.py.
    """
    where = f"{cache_dir}/manifest.json"
    try:
        manifest = with_label_set(read_manifest(cache_dir), label_column)
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    column, classes = manifest["label_column"], class_names_of(manifest)
    dims = manifest.get("dims", {})
    if not all(isinstance(dims.get(m), int) and dims[m] > 0 for m in ("text", "image")):
        raise UserError(f"{where}: dims {dims!r} lacks positive text/image widths; re-embed the cache")
    missing = [name for name in names if name not in manifest.get("splits", {})]
    if missing:
        raise UserError(f"{where}: the cache has no {', '.join(missing)} split (it has: "
                        f"{', '.join(manifest.get('splits', {}))}); embed them with --splits")
    unlabelled = [name for name in names if not manifest["splits"][name].get("labelled", True)]
    if unlabelled:
        raise UserError(f"{where}: split {', '.join(map(repr, unlabelled))} is unlabelled (its file has no "
                        f"{column} column); training needs labelled train, val and test splits: embed files "
                        "with labels (unlabelled posts are for `predict`)")
    splits = {name: load_split(cache_dir, name, label_column=column) for name in names}
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(f"{where}: split {name!r} has no rows; embed more data for it")
        if not np.isin(split.labels, range(len(classes))).all():
            raise UserError(f"{cache_dir}/{name}: {column} labels must be 0..{len(classes) - 1} "
                            f"({', '.join(classes)}); re-embed the cache")
        for column in ("text_emb", "image_emb"):
            finite = np.isfinite(getattr(split, column)).all(axis=1)
            if not finite.all():
                raise UserError(f"{cache_dir}/{name}: {int((~finite).sum())} row(s) of {column} hold NaN or Inf "
                                f"(e.g. id {split.ids[int(np.argmin(finite))]!r}); the cache was built from a broken "
                                "model or checkpoint: re-embed it with this version, which refuses such vectors")
    return manifest, splits


def to_features(split, device):
    """The dict the head consumes, presence masks included; from_numpy shares memory, so on CPU nothing is copied."""
    return {"text_emb": torch.from_numpy(split.text_emb).to(device),
            "image_emb": torch.from_numpy(split.image_emb).to(device),
            "has_text": torch.from_numpy(split.has_text).to(device),
            "has_image": torch.from_numpy(split.has_image).to(device), **feature_tensors(split, device)}


def predict(model, features, labels, weights):
    """(prob_real as float64 NumPy (N,), loss) in eval mode; `labels` is a tensor on the features' device."""
    return scored(logits_of(model, features), labels, weights)


def fit(model, train, val, config, weights, log=None, class_names=CLASS_NAMES):
    """Train `model` (features dict -> logits) on `train` = (features, labels); keep the best `val` epoch.

    Returns after `config.patience` epochs without a strictly better validation
    metric (or `max_epochs`), with the best epoch's weights loaded into `model`.
    """
    (train_features, train_labels), (val_features, val_labels) = train, val
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    val_labels_np = val_labels.cpu().numpy()
    history, best_score, best_epoch, best_state = [], None, 0, None
    for epoch in range(1, config.max_epochs + 1):
        started = time.perf_counter()
        train_loss = train_epoch(model, optimizer, train_features, train_labels, weights, config, generator)
        if not np.isfinite(train_loss):
            raise UserError(f"epoch {epoch}: the training loss is {train_loss} (not finite); lower --lr "
                            f"({config.lr}) or the --class-weights, and check the cache's features")
        metrics = _val_metrics(model, val_features, val_labels, val_labels_np, weights, class_names)
        if metrics is None:
            raise UserError(f"epoch {epoch}: the head's validation predictions are NaN; lower --lr ({config.lr})")
        score = _score(metrics, config.metric)
        history.append(_epoch_row(epoch, train_loss, metrics, config.metric, time.perf_counter() - started))
        if best_score is None or _better(score, best_score, config.metric):
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if log:
            log(_format_row(history[-1], best_epoch))
        if epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    return FitResult(history=history, best_epoch=best_epoch, best_score=best_score)


def train_epoch(model, optimizer, features, labels, weights, config, generator):
    model.train()
    rows = labels.shape[0]
    order = torch.randperm(rows, generator=generator).to(labels.device)
    total = torch.zeros((), device=labels.device)  # summed on device: no sync per step
    # Modality dropout only where a head fuses two modalities (a one-modality head would lose its only input).
    modalities = getattr(getattr(model, "config", None), "modalities", ())
    dropout = config.modality_dropout if len(modalities) == 2 else 0.0
    for start in range(0, rows, config.batch_size):
        index = order[start:start + config.batch_size]
        batch = {k: v[index] for k, v in features.items()}
        if dropout:
            batch = drop_modalities(batch, dropout, generator)
        loss = weighted_cross_entropy(model(batch), labels[index], weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * index.shape[0]
    return total.item() / rows


def _val_metrics(model, features, labels, labels_np, weights, class_names):
    """The epoch's validation metrics (None when a prediction is NaN): binary or K-class ones."""
    if len(class_names) == 2:
        prob, loss = predict(model, features, labels, weights)
        return compute_metrics(labels_np, prob, loss=loss, class_names=class_names) if np.isfinite(prob).all() \
            else None
    probs, loss = scored_k(logits_of(model, features), labels, weights)
    return multiclass_metrics(labels_np, probs, class_names, loss=loss) if np.isfinite(probs).all() else None


def check_stop_metric(name, class_names):
    """Refuse a --metric that these classes do not have (f1_<class name> must name one of them)."""
    known = ("f1_macro", "f1_weighted", "accuracy", "roc_auc", "pr_auc", "loss", *(f"f1_{c}" for c in class_names))
    if name not in known:
        raise UserError(f"--metric {name}: the classes are {', '.join(class_names)}, so use one of "
                        f"{', '.join(known)}")


def _score(metrics, name):
    score = metrics[name]
    if score is None:
        raise UserError(f"--metric {name}: undefined because the validation split has one class; "
                        "use --metric f1_macro or embed a validation split with both classes")
    return score


def _better(score, best, metric):
    return score < best if metric == "loss" else score > best


def _epoch_row(epoch, train_loss, metrics, metric, seconds):
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": metrics["loss"]}
    for name in dict.fromkeys(("f1_macro", "accuracy", "roc_auc", metric)):
        if name != "loss":
            row[f"val_{name}"] = metrics[name]
    row["seconds"] = seconds
    return row


def _format_row(row, best_epoch):
    cells = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
    return "  ".join(cells) + ("  *best" if row["epoch"] == best_epoch else "")


def train_head(splits, head_config, train_config, log=None, class_names=CLASS_NAMES):
    """Seed, build a FusionHead, fit it on splits["train"] with early stopping on "val", then score val and test.

    `class_names` are the labels' classes in label order (the cache's, class_names_of); the head has one
    output per class. Refuses a train or val split of one class (and too few val rows to calibrate on) before
    any epoch; the run's `warnings` (pipeline.train.run_warnings; also in metrics.json, top level and under
    each split's "warnings") say what else to read with care.
    """
    started = time.perf_counter()
    class_names = tuple(class_names)
    if head_config.num_classes != len(class_names):
        raise UserError(f"the head has {head_config.num_classes} outputs but the labels have {len(class_names)} "
                        f"classes ({', '.join(class_names)}); K comes from the cache's label column, not a flag")
    check_stop_metric(train_config.metric, class_names)
    warnings = check_classes(splits, train_config.calibrate, class_names=class_names)
    device = resolve_device(train_config.device)
    threads = head_threads(train_config.threads, device)
    if threads:
        torch.set_num_threads(threads)  # process-wide, as --threads always was; the run folder records it
    torch.manual_seed(train_config.seed)  # initialisation and dropout
    weights = class_weights(splits["train"].labels, train_config.class_weights, class_names).to(device)
    head = FusionHead(head_config)
    scale_features(head, splits["train"])  # --features: standardised by the training rows
    head = head.to(device)
    data = {name: (to_features(splits[name], device), torch.from_numpy(splits[name].labels).to(device))
            for name in SPLITS}
    result = fit(head, data["train"], data["val"], train_config, weights, log, class_names)
    metrics, predictions, temperature = evaluate(head, splits, data, weights, train_config, class_names)
    calibration_warning = (metrics["val"].get("calibration") or {}).get("warning")
    warnings += [calibration_warning] if calibration_warning else []
    warnings += run_warnings(metrics, predictions["test"]["pred"], splits["val"].labels, class_names,
                             train_config.calibrate)
    for name in ("val", "test"):
        metrics[name]["warnings"] = warnings
    return HeadRun(head=head, fit=result, metrics=metrics, predictions=predictions,
                   class_weights=weights.tolist(), device=str(device), seconds=time.perf_counter() - started,
                   temperature=temperature, warnings=warnings, class_names=class_names)
