"""Stage one: embed every row of the splits once and cache the vectors as Parquet.

Resumable (parts that exist are kept), fingerprinted (a cache built from other
models, checkpoints, settings or data is never reused), streaming (one part in
memory at a time) and accountable (every input row ends up embedded or listed
in skipped.tsv with its reason; the manifest also counts, per split, each class,
titles cut at --max-length, placeholder images, duplicate ids and repaired bytes).
"""

import contextlib
import fcntl
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline import __version__
from pipeline.data.images import ImageSettings
from pipeline.data.placeholders import find_placeholders
from pipeline.data.splits import read_split
from pipeline.device import autocast, decode_workers, resolve_device
from pipeline.distributed import Group
from pipeline.embed import cache
from pipeline.embed.fingerprint import combine, differences, path_sha256
from pipeline.embed.loader import Collate, ImageRows, make_loader, plan_batches
from pipeline.embed.writer import PartWriter
from pipeline.errors import UserError
from pipeline.model.batch import pixel_values
from pipeline.model.classifier import build_encoders
from pipeline.model.text_encoder import check_max_length, load_tokenizer

SPLIT_NOTES = ("placeholder_rows", "truncated_titles", "duplicate_ids", "non_utf8_rows")  # manifest keys per split


def run_embed(config, group=Group(), log=print):
    """Build (or resume, or reuse) the cache; returns the manifest.

    Under torchrun (`group` from pipeline.distributed.join) every rank embeds a
    disjoint share of the parts; rank 0 alone checks and clears the cache, and
    writes the manifest after a barrier, once every rank has finished.
    """
    log = log if group.is_main else (lambda *_: None)
    splits = {name: read_split(config.data_dir, name, config.image_pattern) for name in config.splits}
    check_max_length(config.text_model, config.max_length)  # before hours of work, not at the first long title
    image_settings = ImageSettings.from_model_folder(
        config.clip_model, max_pixels=config.max_pixels, draft=config.draft,
    )
    # Through JSON once, so tuples compare equal to the lists read back from disk.
    inputs = json.loads(json.dumps(fingerprint_inputs(config, splits, image_settings)))
    fingerprint = combine(inputs)
    cache_dir = Path(config.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_dir) if group.is_main else contextlib.nullcontext():
        state = group.broadcast(_prepare_cache(cache_dir, fingerprint, inputs, config.on_stale, log)
                                if group.is_main else None)
        if state == "complete":
            log(f"cache {cache_dir} is up to date (fingerprint {fingerprint[:12]}); nothing to embed")
            return cache.read_manifest(cache_dir)
        placeholders = find_placeholders(
            config.resolved_image_root, splits, config.placeholder_max_bytes, config.placeholder_min_rows,
        )
        device = resolve_device(group.device_name(config.device))
        model, lora_summary = build_encoders(
            config.text_model, config.clip_model, config.clip_lora, config.lora_alpha,
            config.pooling, config.clip_embedding,
        )
        model.to(device).eval()
        tokenizer = load_tokenizer(config.text_model)
        if state == "fresh" and group.is_main:
            _start_fresh(cache_dir, fingerprint, inputs)
        group.barrier()  # no rank writes a part before rank 0 has cleared a stale cache
        started = time.perf_counter()
        for name, rows in splits.items():
            skip_rows = (dict.fromkeys(placeholders.rows[name], "placeholder_image")
                         if config.on_placeholder == "skip" else {})
            embed_split(model, tokenizer, rows, config, image_settings, device, group.rank, group.world_size, skip_rows)
        group.barrier()  # every rank's parts are on disk
        timings = {"seconds": round(time.perf_counter() - started, 3), "processes": group.world_size}
        if group.is_main:
            manifest = cache.finalize(
                cache_dir, {name: len(rows) for name, rows in splits.items()}, fingerprint, inputs,
                dims=model.dims, config=_manifest_config(config, lora_summary, device, timings, placeholders),
                split_notes={name: {"placeholder_rows": placeholders.count(name), "duplicate_ids": rows.duplicate_ids,
                                    "non_utf8_rows": rows.non_utf8_rows, "labelled": rows.labelled}
                             for name, rows in splits.items()},
            )
        group.barrier()  # the manifest is written
    manifest = cache.read_manifest(cache_dir)
    log(summary(manifest))
    return manifest


def fingerprint_inputs(config, splits, image_settings):
    """What the cache depends on: content hashes of models, checkpoint and split files, and settings."""
    return {
        "format_version": cache.FORMAT_VERSION,
        "text_model": path_sha256(config.text_model),
        "clip_model": path_sha256(config.clip_model),
        "clip_lora": path_sha256(config.clip_lora) if config.clip_lora else None,
        "lora_alpha": config.lora_alpha,
        "splits": {name: path_sha256(rows.path) for name, rows in splits.items()},
        "image_root": str(Path(config.resolved_image_root).resolve()),
        "image_pattern": config.image_pattern,
        "text": {"pooling": config.pooling, "max_length": config.max_length},
        "image": {**asdict(image_settings), "embedding": config.clip_embedding},
        "part_rows": config.part_rows,
        "cache_dtype": config.cache_dtype,
        # The thresholds change the cache only when placeholders are skipped; otherwise only the counts.
        "placeholders": {"on_placeholder": config.on_placeholder, **({
            "max_bytes": config.placeholder_max_bytes, "min_rows": config.placeholder_min_rows,
        } if config.on_placeholder == "skip" else {})},
    }


@contextmanager
def cache_lock(cache_dir):
    """One writer per cache folder; the OS drops the lock if the process dies."""
    with open(cache_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{cache_dir}: another `embed` run is writing this cache; "
                "wait for it to finish or use another --cache-dir"
            ) from None
        yield


def _prepare_cache(cache_dir, fingerprint, inputs, on_stale, log):
    """'complete', 'resume' or 'fresh' (or refuses a stale cache). A fresh cache is cleared later, by
    `_start_fresh` once the models have loaded, so that a refused model or checkpoint deletes nothing."""
    cache.remove_temp_files(cache_dir)  # from a run that was killed
    old = _read_json(cache_dir / cache.FINGERPRINT_NAME)
    if old is not None and old.get("fingerprint") == fingerprint:
        manifest = _read_json(cache_dir / cache.MANIFEST_NAME)
        if manifest is None:
            return "resume"
        missing = cache.missing_parts(cache_dir, manifest)
        if not missing:
            return "complete"
        log(f"cache {cache_dir}: {len(missing)} part(s) in the manifest are gone "
            f"(e.g. {missing[0]}); embedding them again")
        (cache_dir / cache.MANIFEST_NAME).unlink()
        return "resume"
    if old is not None:
        changed = ", ".join(differences(old.get("inputs", {}), inputs)) or "unknown"
        if on_stale == "refuse":
            raise UserError(
                f"{cache_dir}: cache was built from other inputs (changed: {changed}); "
                "use another --cache-dir or --on-stale rebuild"
            )
        log(f"cache {cache_dir} was built from other inputs (changed: {changed}); rebuilding it")
    return "fresh"


def _start_fresh(cache_dir, fingerprint, inputs):
    _clear(cache_dir)
    cache.write_json_atomic(cache_dir / cache.FINGERPRINT_NAME, {"fingerprint": fingerprint, "inputs": inputs})


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _clear(cache_dir):
    (cache_dir / cache.MANIFEST_NAME).unlink(missing_ok=True)
    (cache_dir / cache.SKIPPED_NAME).unlink(missing_ok=True)
    for child in cache_dir.iterdir():
        if child.is_dir() and (any(child.glob("part-*.parquet")) or any(child.glob(".part-*"))):
            shutil.rmtree(child)


def embed_split(model, tokenizer, rows, config, image_settings, device, rank=0, world_size=1, skip_rows=None):
    """Embed the parts of one split that this rank owns and that are not on disk yet.

    `skip_rows` maps row -> reason for rows left out before loading (placeholders).
    """
    parts = PartWriter(rows, config, model.dims, skip_rows)
    pending = [p for p in parts.pending() if p % world_size == rank]
    collate = Collate(rows.texts, tokenizer, config.max_length, image_settings.size)
    dataset = ImageRows(config.resolved_image_root, rows.image_paths, image_settings)
    batches = plan_batches([parts.embeddable_rows(p) for p in pending], rows.texts, config.batch_size)
    workers = decode_workers(config.num_workers, device)
    loader = make_loader(dataset, collate, batches, workers, pin_memory=device.type == "cuda")
    total = sum(parts.size(p) for p in pending)
    embedded = 0
    try:
        for part in pending:  # rows skipped before loading (empty titles) may complete a part
            parts.maybe_write(part)
        with tqdm(total=total, desc=f"embed {rows.split}", unit="rows", disable=rank != 0) as bar:
            with torch.inference_mode(), autocast(device):
                for batch in loader:
                    embedded += _embed_batch(model, batch, rows, config, image_settings, device, parts)
                    bar.update(len(batch.rows))
    except BaseException:
        parts.abort()
        raise
    parts.close()
    return embedded


def _embed_batch(model, batch, rows, config, image_settings, device, parts):
    for row, reason in batch.bad:
        if config.on_bad_image == "fail":
            raise UserError(
                f"{rows.path}: line {rows.line(row)}, column local_image_path {rows.image_paths[row]!r}: "
                f"{reason.replace('_', ' ')}; fix the image or pass --on-bad-image skip"
            )
        parts.skip(row, reason)
    if not batch.good:
        return 0
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.text.items()}
    pixels = batch.pixels.to(device, non_blocking=True)
    inputs["pixel_values"] = pixel_values(pixels, image_settings)
    vectors = model.encode(inputs)
    good_rows = [batch.rows[i] for i in batch.good]
    parts.add(good_rows, vectors["text_emb"].float().cpu().numpy(), vectors["image_emb"].float().cpu().numpy(),
              truncated=batch.truncated)
    return len(good_rows)


def _manifest_config(config, lora_summary, device, timings, placeholders):
    """Settings and circumstances of this run; `timings` covers embedding only (this run's rows, all ranks)."""
    import transformers

    return {
        "embed": {**asdict(config), "splits": list(config.splits)},
        "clip_lora": lora_summary,
        "device": str(device),
        "timings": timings,
        "placeholder_files": placeholders.files,  # the most shared ones
        "versions": {"pipeline": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }


def summary(manifest):
    """Per split: rows read, embedded, skipped by reason, embedded rows per class, and data notes."""
    lines = [f"{'split':<8} {'read':>8} {'embedded':>9} {'skipped':>8} {'fake':>8} {'real':>8}  "
             "skipped by reason; notes"]
    warnings = []
    for name, info in manifest["splits"].items():
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(info["skipped_by_reason"].items())) or "-"
        notes = "".join(f"; {key}={info[key]}" for key in SPLIT_NOTES if info.get(key))
        classes = info.get("class_counts", {})
        labelled = info.get("labelled", True)
        fake, real = (classes.get("fake", 0), classes.get("real", 0)) if labelled else ("-", "-")
        lines.append(f"{name:<8} {info['rows_read']:>8} {info['rows_embedded']:>9} {info['rows_skipped']:>8} "
                     f"{fake:>8} {real:>8}  {reasons}{notes}{'' if labelled else '; unlabelled'}")
        if not labelled:
            if not info["rows_embedded"]:
                warnings.append(f"warning: split {name!r} has no embedded rows")
            continue
        present = [label for label, count in classes.items() if count]
        if not present:
            warnings.append(f"warning: split {name!r} has no embedded rows")
        elif len(present) == 1:
            warnings.append(f"warning: split {name!r} has embedded rows of one class only ({present[0]}); "
                            "a classifier cannot learn or be scored on it")
    return "\n".join(lines + warnings)
