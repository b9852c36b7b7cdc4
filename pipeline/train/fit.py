"""Train a fusion head on cached embeddings: a model-agnostic fit loop plus evaluation.

The features fit in memory, so an epoch is a seeded permutation sliced into
mini-batches (no DataLoader, no per-row Python). Early stopping keeps the best
validation epoch's weights; the decision threshold is tuned on validation only,
and test is scored once, with that model and that threshold.

`metrics[split]` top-level keys use the default threshold 0.5 (the argmax of
the logits); `metrics[split]["tuned"]` holds the same metrics at the threshold
tuned on validation (optimistic on val itself, honest on test).
"""

import time

import numpy as np
import torch

from pipeline.data.classes import class_names_of
from pipeline.data.splits import SPLITS
from pipeline.device import resolve_device
from pipeline.embed.cache import load_split, read_manifest
from pipeline.embed.labels import with_label_set
from pipeline.errors import UserError
from pipeline.model.head import FusionHead, drop_modalities
from pipeline.train.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_usable_temperature,
)
from pipeline.train.class_checks import check_classes
from pipeline.train.features import feature_tensors, scale_features
from pipeline.train.losses import class_weights, weighted_cross_entropy
from pipeline.train.metrics import compute_metrics, presence_groups, score_probabilities
from pipeline.train.run_folder import FitResult, HeadRun
from pipeline.train.threads import head_threads

EVAL_BATCH = 8192  # evaluation needs no gradients, so bigger batches are just faster


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


@torch.no_grad()
def logits_of(model, features):
    """(N, 2) logits in eval mode, in batches of EVAL_BATCH rows."""
    model.eval()
    rows = next(iter(features.values())).shape[0]
    return torch.cat([model({k: v[start:start + EVAL_BATCH] for k, v in features.items()})
                      for start in range(0, rows, EVAL_BATCH)])


def scored(logits, labels, weights):
    """(prob_real as float64 NumPy (N,), class-weighted loss) of (N, 2) logits."""
    loss = weighted_cross_entropy(logits, labels, weights).item()
    return torch.softmax(logits.float(), dim=1)[:, 1].double().cpu().numpy(), loss


def predict(model, features, labels, weights):
    """(prob_real as float64 NumPy (N,), loss) in eval mode; `labels` is a tensor on the features' device."""
    return scored(logits_of(model, features), labels, weights)


def fit(model, train, val, config, weights, log=None):
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
        prob, val_loss = predict(model, val_features, val_labels, weights)
        if not np.isfinite(prob).all():
            raise UserError(f"epoch {epoch}: the head's validation predictions are NaN; lower --lr ({config.lr})")
        metrics = compute_metrics(val_labels_np, prob, loss=val_loss)
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


def train_head(splits, head_config, train_config, log=None):
    """Seed, build a FusionHead, fit it on splits["train"] with early stopping on "val", then score val and test.

    Refuses a train or val split of one class (and too few val rows to calibrate on) before any epoch; the
    run's `warnings` (also in metrics.json, under each split's "warnings") say what else to read with care.
    """
    started = time.perf_counter()
    warnings = check_classes(splits, train_config.calibrate)
    device = resolve_device(train_config.device)
    threads = head_threads(train_config.threads, device)
    if threads:
        torch.set_num_threads(threads)  # process-wide, as --threads always was; the run folder records it
    torch.manual_seed(train_config.seed)  # initialisation and dropout
    weights = class_weights(splits["train"].labels, train_config.class_weights).to(device)
    head = FusionHead(head_config)
    scale_features(head, splits["train"])  # --features: standardised by the training rows
    head = head.to(device)
    data = {name: (to_features(splits[name], device), torch.from_numpy(splits[name].labels).to(device))
            for name in SPLITS}
    result = fit(head, data["train"], data["val"], train_config, weights, log)
    metrics, predictions, temperature = evaluate(head, splits, data, weights, train_config)
    calibration_warning = (metrics["val"].get("calibration") or {}).get("warning")
    warnings += [calibration_warning] if calibration_warning else []
    for name in ("val", "test"):
        metrics[name]["warnings"] = warnings
    return HeadRun(head=head, fit=result, metrics=metrics, predictions=predictions,
                   class_weights=weights.tolist(), device=str(device), seconds=time.perf_counter() - started,
                   temperature=temperature, warnings=warnings)


def evaluate(model, splits, data, weights, config):
    """(metrics, predictions, temperature): val and test scored (see score_probabilities).

    With `config.calibrate == "temperature"` one temperature is fitted on validation and
    every reported probability is calibrated (the threshold is then tuned on calibrated
    probabilities); each split's metrics get a `calibration` dict with ECE and Brier
    before and after. The loss stays the model's own (uncalibrated) loss.
    """
    logits = {name: logits_of(model, data[name][0]) for name in ("val", "test")}  # one forward pass per split
    outputs = {name: scored(logits[name], data[name][1], weights) for name in logits}
    labels = {name: splits[name].labels for name in outputs}
    probs = {name: prob for name, (prob, _) in outputs.items()}
    temperature, calibration = None, {}
    if config.calibrate == "temperature":
        # logit_real - logit_fake, what temperature scaling divides
        margins = {name: (values.double()[:, 1] - values.double()[:, 0]).cpu().numpy()
                   for name, values in logits.items()}
        temperature, fitted, warning = fit_usable_temperature(margins["val"], labels["val"])
        calibrated = {name: apply_temperature(margin, temperature) for name, margin in margins.items()}
        calibration = {name: {
            "method": "temperature", "temperature": temperature, "fitted_temperature": fitted,
            **({"warning": warning} if warning else {}),
            "ece_before": expected_calibration_error(labels[name], probs[name]),
            "ece_after": expected_calibration_error(labels[name], calibrated[name]),
            "brier_before": brier_score(labels[name], probs[name]),
            "brier_after": brier_score(labels[name], calibrated[name])} for name in outputs}
        probs = calibrated
    metrics, predictions = score_probabilities(
        ids={name: splits[name].ids for name in outputs}, labels=labels, probs=probs,
        losses={name: loss for name, (_, loss) in outputs.items()},
        groups={name: presence_groups(splits[name].has_text, splits[name].has_image) for name in outputs},
        class_weights=weights.tolist(), bootstrap=config.bootstrap, seed=config.seed,
    )
    for name, values in calibration.items():
        metrics[name]["calibration"] = values
    return metrics, predictions, temperature
