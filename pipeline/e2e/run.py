"""`finetune-e2e`: fine-tune the encoders and the fusion head together, evaluate as stage two does, export.

Run folder: stage two's files (config.json, metrics.json, epochs.csv,
predictions, plots, head/) plus skipped.tsv, checkpoints/ (for --resume) and
export/ (see pipeline.export).
"""

import json
import os
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

import pipeline
from pipeline.data.classes import resolve_class_names
from pipeline.data.images import ImageSettings
from pipeline.data.splits import SPLITS, read_split
from pipeline.device import decode_workers, resolve_device
from pipeline.e2e import kway
from pipeline.e2e.data import E2ERows, MultimodalDataCollator, scan_rows
from pipeline.e2e.export import export_model
from pipeline.e2e.trainer import MultimodalTrainer, configure_trainable, metrics_from_logits
from pipeline.embed.cache import write_skipped
from pipeline.errors import UserError
from pipeline.model.classifier import build_encoders
from pipeline.model.families import image_lora_targets
from pipeline.model.head import FusionHead, check_dims, load_head
from pipeline.model.image_encoder import check_image_size, image_family_of, resolve_embedding
from pipeline.model.text_encoder import check_max_length, load_tokenizer, text_lora_targets
from pipeline.outputs import claim_run_folder
from pipeline.runs.encoders import exported
from pipeline.runs.record import data_of_e2e
from pipeline.train.losses import class_weights, weighted_cross_entropy
from pipeline.train.metrics import presence_groups, score_probabilities, shown
from pipeline.train.multiclass import score_multiclass
from pipeline.train.run_folder import FitResult, HeadRun, write_run
from pipeline.train.run_warnings import run_warnings


def run_finetune(data, config, log=print, command_line=None):
    """`data` is stage one's EmbedConfig (data and model flags); returns the run folder. `command_line`
    (the words typed) goes into its run record.

    Under torchrun the Trainer runs DDP (gloo on CPU, NCCL on CUDA); every rank
    evaluates its share, and rank 0 alone writes the run folder and the exports.
    """
    out = Path(config.out)
    if int(os.environ.get("RANK", "0")) != 0:
        log = lambda *_: None  # noqa: E731 - one rank speaks
    else:  # before any work: never write among files we did not write
        claim_run_folder(out, "finetune-e2e", overwrite=config.overwrite, resume=config.resume)
    set_seed(config.train.seed)
    device = resolve_device(data.device)
    settings = ImageSettings.from_model_folder(data.clip_model, max_pixels=data.max_pixels, draft=data.draft)
    data = replace(data, clip_embedding=resolve_embedding(data.clip_model, data.clip_embedding)[0])  # as recorded
    if config.train_image == "lora":  # the run records the modules LoRA wrapped
        config = replace(config, lora_targets=image_lora_targets(image_family_of(data.clip_model), config.lora_targets))
    if config.train_text == "lora":  # the run records the modules LoRA wrapped, as it records the resolved pooling
        config = replace(config, text_lora_targets=text_lora_targets(data.text_model, config.text_lora_targets))
    check_image_size(data.clip_model, settings.size, Path(data.clip_model) / "preprocessor_config.json")
    check_max_length(data.text_model, data.max_length)  # before the rows are scanned, not at the first long title
    splits, datasets, skipped, names = _load_rows(data, settings, log)
    binary = len(names) == 2  # two classes: stage two's binary scoring, as before N classes
    config = replace(config, head=replace(config.head, num_classes=len(names)))
    if not binary:
        kway.check_stop_metric(config.train.metric)
    model, lora_summary = build_model(data, config)
    tokenizer = load_tokenizer(data.text_model)
    train_labels = splits["train"].labels[datasets["train"].keep]
    weights = class_weights(train_labels, config.train.class_weights, names)
    trainer = MultimodalTrainer(
        model=model, args=_training_arguments(config, data, out, device),
        train_dataset=datasets["train"], eval_dataset=datasets["val"],
        data_collator=MultimodalDataCollator(tokenizer, settings, data.max_length),
        compute_metrics=metrics_from_logits if binary else kway.metrics_from_logits,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.train.patience)],
        class_weights=weights, lr_encoder=config.lr_encoder, lr_head=config.lr_head,
        modality_dropout=config.train.modality_dropout if len(model.head.config.modalities) == 2 else 0.0,
    )
    if trainer.is_world_process_zero():
        _tidy_checkpoints(out / "checkpoints", config.resume, log)
    trainer.accelerator.wait_for_everyone()  # no rank looks for a checkpoint rank 0 is removing
    checkpoint = _newest_checkpoint(out / "checkpoints") if config.resume else None
    if checkpoint:
        log(f"resuming {out} from {checkpoint} ({_progress(checkpoint)})")
    trainer.train(resume_from_checkpoint=checkpoint)
    run = _evaluate(trainer, splits, datasets, weights, config.train, names)  # a collective: every rank takes part
    if not trainer.is_world_process_zero():
        return out
    resolved = {"command": "finetune-e2e", "pipeline_version": pipeline.__version__, "data": asdict(data),
                "finetune": asdict(config), "clip_lora": lora_summary, "class_weights": weights.tolist(),
                "device": str(device), "label_column": data.label_column, "class_names": list(names)}
    export_model(trainer.model, tokenizer, out / "export", data, names)
    # The pooling the model was trained through, as export/embed.sh names it.
    encoders = exported(out, model.text_encoder.pooling, data.max_length, data.clip_embedding, settings.record(),
                        model.dims, text_family=model.text_encoder.family.name,
                        image_family=model.image_encoder.family.name)
    write_run(out, run, resolved, encoders=encoders, command_line=command_line, data=data_of_e2e(data),
              label_column=data.label_column)
    write_skipped(out / "skipped.tsv", skipped)
    log(f"Validation metrics: {shown(run.metrics['val'])}")
    log(f"Test metrics: {shown(run.metrics['test'])}")
    for warning in run.warnings:  # also in metrics.json (top level and per split) and the report's banner
        log(warning)
    log(f"run folder: {out}; re-embed its data with the exported encoders: "
        f"sh {out / 'export' / 'embed.sh'} CACHE_DIR")
    return out


def _load_rows(data, settings, log):
    splits, datasets, skipped = {}, {}, []
    image_root = data.resolved_image_root
    for name in SPLITS:
        rows = read_split(data.data_dir, name, data.image_pattern, label_column=data.label_column,
                          num_classes=data.num_classes)
        if not rows.labelled:
            raise UserError(f"{rows.path}: no {data.label_column} column, so split {name!r} is unlabelled; fine-tuning "
                            "needs labelled train, val and test files (unlabelled posts are for `predict`)")
        keep, bad, halves = scan_rows(rows, image_root, settings,
                                      decode_workers(data.num_workers, resolve_device(data.device)),
                                      text_only=data.on_bad_image == "text-only",
                                      image_only=data.on_empty_title == "image-only")
        bad_images = [(row, why) for row, why in bad if why != "empty_title"]  # an empty title alone skips
        bad_images += [(row, why) for row, (half, why) in halves.items() if half == "image"]
        if bad_images and data.on_bad_image == "fail":
            row, reason = bad_images[0]
            raise UserError(f"{rows.path}: line {rows.line(row)}, column local_image_path {rows.image_paths[row]!r}: "
                            f"{reason.replace('_', ' ')}; fix the image or pass --on-bad-image skip")
        skipped += [(name, rows.ids[row], reason) for row, reason in bad]
        text_only = [row for row, (half, _) in halves.items() if half == "image"]
        log(f"{name}: {len(rows)} rows read, {len(keep)} used ({len(text_only)} text-only, "
            f"{len(halves) - len(text_only)} image-only), {len(bad)} skipped")
        splits[name], datasets[name] = rows, E2ERows(rows, keep, image_root, settings, no_image=text_only)
    names = resolve_class_names(data.label_column, splits, data.num_classes, data.class_names)
    return splits, datasets, skipped, names


def build_model(data, config):
    model, lora_summary = build_encoders(data.text_model, data.clip_model, data.clip_lora, data.lora_alpha,
                                         data.pooling, data.clip_embedding)
    dims = model.dims
    if config.init_head:
        folder = Path(config.init_head)
        head = load_head(folder / "head" if (folder / "head").is_dir() else folder)
        check_dims(head.config, dims, source="the encoders of --text-model/--clip-model", head_name=str(folder))
        if head.config.num_classes != config.head.num_classes:
            raise UserError(f"--init-head {folder}: the head has {head.config.num_classes} outputs but the labels "
                            f"have {config.head.num_classes} classes; give a head trained on this label column")
    else:
        head = FusionHead(replace(config.head, text_dim=dims["text"], image_dim=dims["image"]))
    model.head = head.train()
    configure_trainable(model, config.train_text, config.train_image, config.lora_rank, config.lora_train_alpha,
                        config.lora_targets, config.text_lora_targets)
    if config.grad_checkpointing:
        for module in model.modules():
            if hasattr(module, "gradient_checkpointing_enable") and hasattr(module, "config"):
                module.gradient_checkpointing_enable()
    return model, lora_summary


def _training_arguments(config, data, out, device):
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), eval_strategy="epoch", save_strategy="epoch",
        logging_strategy="epoch", load_best_model_at_end=True, metric_for_best_model=config.train.metric,
        greater_is_better=config.train.metric != "loss", save_total_limit=2, num_train_epochs=config.train.max_epochs,
        per_device_train_batch_size=data.batch_size, per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum, weight_decay=config.train.weight_decay,
        learning_rate=config.lr_encoder, seed=config.train.seed, data_seed=config.train.seed, report_to="none",
        bf16=device.type == "cuda", use_cpu=device.type == "cpu",
        dataloader_num_workers=decode_workers(data.num_workers, device),
        remove_unused_columns=False, label_names=["labels"], ddp_find_unused_parameters=False,
    )


def _tidy_checkpoints(folder, resume, log):
    """With --resume, drop checkpoints cut short by a kill; without it, start afresh. Only the Trainer's
    own checkpoint-N folders are removed, never anything else in the folder."""
    checkpoints = _checkpoints(folder)
    if not resume:
        if checkpoints:
            log(f"{folder}: starting afresh and removing old checkpoints (pass --resume to continue them)")
            for checkpoint in checkpoints:
                shutil.rmtree(checkpoint)
        return
    for checkpoint in checkpoints:
        if _is_complete(checkpoint):
            return
        # The Trainer writes trainer_state.json last: without it the process died mid-save.
        log(f"{checkpoint}: incomplete (interrupted while saving); removing it")
        shutil.rmtree(checkpoint)
    raise UserError(f"--resume: no complete checkpoint in {folder}; run once without --resume")


def _checkpoints(folder):
    """Checkpoint folders, newest first."""
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob("checkpoint-*")
             if re.fullmatch(r"checkpoint-\d+", path.name) and path.is_dir() and not path.is_symlink()]
    return sorted(found, key=lambda path: -int(path.name.split("-")[-1]))


def _newest_checkpoint(folder):
    return str(_checkpoints(folder)[0])


def _progress(checkpoint):
    """'epoch E of N, step S': how far the checkpoint's run had got (from its trainer_state.json)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    epochs, step = state.get("num_train_epochs", "?"), state.get("global_step", "?")
    return f"epoch {state.get('epoch', 0):g} of {epochs}, step {step}"


def _is_complete(checkpoint):
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(state, dict)  # the Trainer's state is an object; anything else was not written by it


def _evaluate(trainer, splits, datasets, weights, train_config, names):
    """Stage two's scoring on the Trainer's predictions: threshold tuned on val, test scored once (two classes;
    K > 2: the argmax, train/multiclass.py)."""
    probs, losses, labels, ids = {}, {}, {}, {}
    for name in ("val", "test"):
        output = trainer.predict(datasets[name])
        logits = torch.as_tensor(output.predictions).float()
        target = torch.as_tensor(output.label_ids).long()
        expected = splits[name].labels[datasets[name].keep]
        if not np.array_equal(target.numpy(), expected):  # predictions must line up with the ids below
            raise RuntimeError(f"{name}: gathered predictions are not in dataset order "
                               f"({len(target)} vs {len(expected)} rows)")
        probs[name] = torch.softmax(logits, dim=-1).numpy()  # (N, K)
        losses[name] = float(weighted_cross_entropy(logits, target, weights))
        labels[name] = target.numpy()
        ids[name] = np.asarray(splits[name].ids, dtype=object)[datasets[name].keep]
    history, best_epoch = _history(trainer.state)
    fit = FitResult(history=history, best_epoch=best_epoch, best_score=trainer.state.best_metric)
    groups = {name: presence_groups([bool(splits[name].texts[row]) for row in datasets[name].keep],
                                    [row not in datasets[name].no_image for row in datasets[name].keep])
              for name in ("val", "test")}
    train_labels = splits["train"].labels[datasets["train"].keep]  # the rows the weights were counted on
    options = {"groups": groups, "class_weights": weights.tolist(), "bootstrap": train_config.bootstrap,
               "seed": train_config.seed, "train_labels": train_labels}
    if len(names) == 2:  # prob_real, as stage two's binary scoring takes it
        metrics, predictions = score_probabilities(ids, labels, {name: prob[:, 1] for name, prob in probs.items()},
                                                   losses, class_names=names, **options)
    else:  # the argmax decides
        metrics, predictions = score_multiclass(ids, labels, probs, losses, names, **options)
    # The same sanity warnings as train-head (a model of one class, no better than the majority, small val).
    warnings = run_warnings(metrics, predictions["test"]["pred"], labels["val"], names)
    for name in ("val", "test"):
        metrics[name]["warnings"] = warnings
    return HeadRun(head=trainer.model.head, fit=fit, metrics=metrics, predictions=predictions,
                   class_weights=weights.tolist(), device=str(trainer.args.device), seconds=None, warnings=warnings,
                   class_names=tuple(names))


def _history(state):
    """Per-epoch rows from the Trainer's log: train loss and every eval metric."""
    rows = {}
    for entry in state.log_history:
        epoch = int(round(entry.get("epoch", 0)))
        if "loss" in entry:
            rows.setdefault(epoch, {"epoch": epoch})["train_loss"] = entry["loss"]
        for key, value in entry.items():
            if key.startswith("eval_") and key not in (
                    "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"):
                rows.setdefault(epoch, {"epoch": epoch})["val_" + key[5:]] = value
    history = [rows[e] for e in sorted(rows) if e > 0]
    best = state.best_model_checkpoint
    best_epoch = next((int(round(e["epoch"])) for e in state.log_history
                       if best and e.get("step") == int(best.rsplit("-", 1)[-1]) and "eval_loss" in e), None)
    return history, best_epoch

