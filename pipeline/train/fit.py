"""Train a fusion head on cached embeddings: a model-agnostic fit loop plus evaluation.

The features fit in memory, so an epoch is a seeded permutation sliced into
mini-batches (no DataLoader, no per-row Python). Early stopping keeps the best
validation epoch's weights; the decision threshold is tuned on validation only,
and test is scored once, with that model and that threshold.

`metrics[split]` top-level keys use the default threshold 0.5 (the argmax of
the logits); `metrics[split]["tuned"]` holds the same metrics at the threshold
tuned on validation (optimistic on val itself, honest on test).
"""

import math
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.embed.cache import load_split, read_manifest
from pipeline.device import DEVICES, resolve_device
from pipeline.errors import UserError
from pipeline.model.head import FusionHead
from pipeline.train.losses import WEIGHT_MODES, class_weights, weighted_cross_entropy
from pipeline.train.metrics import compute_metrics, tune_threshold

SPLITS = ("train", "val", "test")
STOP_METRICS = ("f1_macro", "accuracy", "roc_auc", "pr_auc", "f1_fake", "f1_real", "loss")
EVAL_BATCH = 8192  # evaluation needs no gradients, so bigger batches are just faster


@dataclass(frozen=True)
class TrainConfig:
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=256, metadata={"help": "rows per optimiser step"})
    max_epochs: int = field(default=30, metadata={"help": "stop after this many epochs even if still improving"})
    patience: int = field(default=4, metadata={
        "help": "stop after this many epochs without a better validation metric"})
    metric: str = field(default="f1_macro", metadata={
        "help": f"validation metric for early stopping: {', '.join(STOP_METRICS)} (loss: lower is better)"})
    class_weights: str = field(default="balanced", metadata={
        "help": f"class weights of the loss: {WEIGHT_MODES}; balanced = n / (classes * count) on train"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation, dropout and batch order"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads; 0 leaves torch's default (one per core). On a machine busy with other "
                "work, 1 can be several times faster than threads that wait on each other"})

    def __post_init__(self):
        for name, minimum in (("batch_size", 1), ("max_epochs", 1), ("patience", 1), ("threads", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise UserError(f"{name} {value!r}: needs to be a whole number of at least {minimum}")
        if not _finite(self.lr) or self.lr <= 0:
            raise UserError(f"lr {self.lr!r}: needs to be a finite number above 0")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise UserError(f"weight_decay {self.weight_decay!r}: needs to be a finite number of at least 0")
        if self.metric not in STOP_METRICS:
            raise UserError(f"metric {self.metric!r}: needs to be one of {', '.join(STOP_METRICS)}")
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", str(self.device)):
            raise UserError(f"device {self.device!r}: needs to be one of {', '.join(DEVICES)} or cuda:N")
        class_weights([0, 1], self.class_weights)  # validates explicit values early, before any loading


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_cached_splits(cache_dir, names=SPLITS):
    """(manifest, {split: CachedSplit}) after checking that every split is there, non-empty and labelled 0/1."""
    manifest = read_manifest(cache_dir)
    where = f"{cache_dir}/manifest.json"
    dims = manifest.get("dims", {})
    if not all(isinstance(dims.get(m), int) and dims[m] > 0 for m in ("text", "image")):
        raise UserError(f"{where}: dims {dims!r} lacks positive text/image widths; re-embed the cache")
    missing = [name for name in names if name not in manifest.get("splits", {})]
    if missing:
        raise UserError(f"{where}: the cache has no {', '.join(missing)} split (it has: "
                        f"{', '.join(manifest.get('splits', {}))}); embed them with --splits")
    splits = {name: load_split(cache_dir, name) for name in names}
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(f"{where}: split {name!r} has no rows; embed more data for it")
        if not np.isin(split.labels, (0, 1)).all():
            raise UserError(f"{cache_dir}/{name}: labels must be 0 (fake) or 1 (real); re-embed the cache")
    return manifest, splits


def to_features(split, device):
    """The dict the head consumes; from_numpy shares memory, so on CPU nothing is copied."""
    return {"text_emb": torch.from_numpy(split.text_emb).to(device),
            "image_emb": torch.from_numpy(split.image_emb).to(device)}


@torch.no_grad()
def predict(model, features, labels, weights):
    """(prob_real as float64 NumPy (N,), loss) in eval mode; `labels` is a tensor on the features' device."""
    model.eval()
    rows = labels.shape[0]
    logits = torch.cat([model({k: v[start:start + EVAL_BATCH] for k, v in features.items()})
                        for start in range(0, rows, EVAL_BATCH)])  # (N, 2)
    loss = weighted_cross_entropy(logits, labels, weights).item()
    return torch.softmax(logits.float(), dim=1)[:, 1].double().cpu().numpy(), loss


@dataclass
class FitResult:
    history: list  # one dict per epoch: epoch, train_loss, val_loss, val_<metric>..., seconds
    best_epoch: int
    best_score: float


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
        train_loss = _train_epoch(model, optimizer, train_features, train_labels, weights, config, generator)
        prob, val_loss = predict(model, val_features, val_labels, weights)
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


def _train_epoch(model, optimizer, features, labels, weights, config, generator):
    model.train()
    rows = labels.shape[0]
    order = torch.randperm(rows, generator=generator).to(labels.device)
    total = torch.zeros((), device=labels.device)  # summed on device: no sync per step
    for start in range(0, rows, config.batch_size):
        index = order[start:start + config.batch_size]
        loss = weighted_cross_entropy(model({k: v[index] for k, v in features.items()}), labels[index], weights)
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


@dataclass
class HeadRun:
    head: FusionHead
    fit: FitResult
    metrics: dict  # {"val": {...}, "test": {...}}, each with a "tuned" sub-dict
    predictions: dict  # {split: {"id", "label", "prob_real", "pred", "pred_tuned"}} as NumPy arrays
    class_weights: list
    device: str
    seconds: float


def train_head(splits, head_config, train_config, log=None):
    """Seed, build a FusionHead, fit it on splits["train"] with early stopping on "val", then score val and test."""
    started = time.perf_counter()
    if train_config.threads:
        torch.set_num_threads(train_config.threads)  # a process-wide setting, so only when asked for
    device = resolve_device(train_config.device)
    torch.manual_seed(train_config.seed)  # initialisation and dropout
    weights = class_weights(splits["train"].labels, train_config.class_weights).to(device)
    head = FusionHead(head_config).to(device)
    data = {name: (to_features(splits[name], device), torch.from_numpy(splits[name].labels).to(device))
            for name in SPLITS}
    result = fit(head, data["train"], data["val"], train_config, weights, log)
    metrics, predictions = evaluate(head, splits, data, weights)
    return HeadRun(head=head, fit=result, metrics=metrics, predictions=predictions,
                   class_weights=weights.tolist(), device=str(device), seconds=time.perf_counter() - started)


def evaluate(model, splits, data, weights):
    """Score val and test (see score_probabilities) with the model's predicted probabilities."""
    outputs = {name: predict(model, *data[name], weights) for name in ("val", "test")}
    return score_probabilities(
        ids={name: splits[name].ids for name in outputs}, labels={name: splits[name].labels for name in outputs},
        probs={name: prob for name, (prob, _) in outputs.items()},
        losses={name: loss for name, (_, loss) in outputs.items()},
    )


def score_probabilities(ids, labels, probs, losses):
    """Tune the threshold on val only, then score val and test at 0.5 and at that threshold.

    Shared by head training and end-to-end fine-tuning; each argument maps "val"
    and "test" to that split's ids, 0/1 labels, prob_real and loss.
    """
    threshold = tune_threshold(labels["val"], probs["val"])
    metrics, predictions = {}, {}
    for name, prob in probs.items():
        metrics[name] = compute_metrics(labels[name], prob, loss=losses[name])
        metrics[name]["tuned"] = compute_metrics(labels[name], prob, threshold=threshold, loss=losses[name])
        predictions[name] = {"id": ids[name], "label": labels[name], "prob_real": prob,
                             "pred": (prob > 0.5).astype(np.int64), "pred_tuned": (prob > threshold).astype(np.int64)}
    return metrics, predictions
