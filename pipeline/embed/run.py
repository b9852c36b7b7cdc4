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
import os
import stat
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline import __version__
from pipeline.data.classes import resolve_class_names
from pipeline.data.images import ImageSettings
from pipeline.data.known_placeholders import KNOWN_PLACEHOLDERS
from pipeline.data.placeholders import find_placeholders
from pipeline.data.splits import read_split
from pipeline.device import autocast, decode_workers, resolve_device
from pipeline.distributed import Group
from pipeline.embed import cache, owned
from pipeline.embed import labels as label_sets
from pipeline.embed.fingerprint import combine, differences, path_sha256
from pipeline.embed.loader import Collate, ImageRows, make_loader, plan_batches
from pipeline.embed.main_loop import embed_batches
from pipeline.embed.similarity import similarity_input
from pipeline.embed.writer import PartJob, PartWriter
from pipeline.errors import UserError
from pipeline.files import output_folder
from pipeline.model.classifier import build_encoders
from pipeline.model.image_encoder import check_image_size, image_family_of, resolve_embedding
from pipeline.model.similarity import SIMILARITY
from pipeline.model.text_encoder import check_max_length, family_of, load_tokenizer, resolve_pooling
from pipeline.outputs import STAGE_ONE_CACHE, refuse_other_cache

SPLIT_NOTES = ("placeholder_rows", "truncated_titles", "duplicate_ids", "non_utf8_rows")  # manifest keys per split


def run_embed(config, group=Group(), log=print):
    """Build (or resume, or reuse) the cache; returns the manifest.

    Under torchrun (`group` from pipeline.distributed.join) every rank embeds a
    disjoint share of the parts; rank 0 alone checks and clears the cache, and
    writes the manifest after a barrier, once every rank has finished.
    """
    log = log if group.is_main else (lambda *_: None)
    splits = {name: read_split(config.data_dir, name, config.image_pattern, label_column=config.label_column,
                               num_classes=config.num_classes) for name in config.splits}
    names = resolve_class_names(config.label_column, splits, config.num_classes, config.class_names)
    labels = (splits, config.label_column, names)  # written beside the vectors: see embed/labels.py
    pooling, why = resolve_pooling(config.text_model, config.pooling)
    log(f"text pooling: {pooling}" + (f" (--pooling auto: {why})" if config.pooling == "auto" else ""))
    requested, config = config.pooling, replace(config, pooling=pooling)  # from here on, the resolved value
    embedding, why = resolve_embedding(config.clip_model, config.clip_embedding)
    log(f"image embedding: {embedding}" + (f" (--image-embedding auto: {why})" if config.clip_embedding == "auto"
                                            else ""))
    config = replace(config, clip_embedding=embedding)  # a CLIP user's auto is projected: the fingerprint of before
    tokenizer = load_tokenizer(config.text_model)  # refuses a folder without a usable tokenizer
    check_max_length(config.text_model, config.max_length, tokenizer)  # before hours of work
    image_settings = ImageSettings.from_model_folder(
        config.clip_model, max_pixels=config.max_pixels, draft=config.draft,
    )
    check_image_size(config.clip_model, image_settings.size, Path(config.clip_model) / "preprocessor_config.json")
    # Through JSON once, so tuples compare equal to the lists read back from disk.
    inputs = json.loads(json.dumps(fingerprint_inputs(config, splits, image_settings)))
    similarity = SIMILARITY in inputs.get("features", ())
    if similarity:
        log("similarity: one model is both towers, so each row's text-image cosine is cached too")
    fingerprint = combine(inputs)
    cache_dir = output_folder(config.cache_dir, "--cache-dir")
    if group.is_main:
        refuse_other_cache(cache_dir, STAGE_ONE_CACHE)  # predict's parts would be deleted as stale
    if group.is_main and owned.read_fingerprint(cache_dir) is None and not (cache_dir / owned.STAGING).is_dir():
        owned.refuse_foreign(cache_dir)  # before the lock file is created in a folder that is not ours
    with cache_lock(cache_dir) if group.is_main else contextlib.nullcontext():
        state, target = group.broadcast(_prepare_cache(cache_dir, fingerprint, inputs, config.on_stale, log)
                                        if group.is_main else None)
        if state == "complete":
            log(f"cache {cache_dir} is up to date (fingerprint {fingerprint[:12]}); nothing to embed")
            manifest = cache.read_manifest(cache_dir)
            if group.is_main and not label_sets.has_label_set(manifest, config.label_column, names):
                manifest = label_sets.write_label_set(cache_dir, manifest, *labels)
                cache.write_json_atomic(cache_dir / cache.MANIFEST_NAME, manifest)
                log(f"label set {config.label_column!r} ({len(names)} classes) written and in use; "
                    "no encoder ran")
                log(summary(manifest))
            return manifest
        if state == "resume":
            log(_resuming(target, splits, config.part_rows, fingerprint))
        placeholders = find_placeholders(
            config.resolved_image_root, splits, config.placeholder_max_bytes, config.placeholder_min_rows,
        )
        device = resolve_device(group.device_name(config.device))
        model, lora_summary = build_encoders(
            config.text_model, config.clip_model, config.clip_lora, config.lora_alpha,
            config.pooling, config.clip_embedding,
        )
        model.to(device).eval()
        if state == "fresh" and group.is_main:
            _start_fresh(target, fingerprint, inputs)
        group.barrier()  # no rank writes a part before rank 0 has cleared a stale cache
        started = time.perf_counter()
        # A rebuild goes to the staging folder.
        job = replace(PartJob.from_config(config, folder=target), similarity=similarity)
        for name, rows in splits.items():
            flagged = dict.fromkeys(placeholders.rows[name], "placeholder_image")
            skip_rows = flagged if config.on_placeholder == "skip" else {}
            no_image = flagged if config.on_placeholder == "text-only" else {}
            embed_split(model, tokenizer, rows, job, image_settings, device, group.rank, group.world_size, skip_rows,
                        no_image)
        group.barrier()  # every rank's parts are on disk
        timings = {"seconds": round(time.perf_counter() - started, 3), "processes": group.world_size}
        if group.is_main:
            manifest = cache.finalize(
                target, {name: len(rows) for name, rows in splits.items()}, fingerprint, inputs,
                dims=model.dims,
                config=_manifest_config(config, lora_summary, device, timings, placeholders, requested),
                split_notes={name: {"placeholder_rows": placeholders.count(name), "duplicate_ids": rows.duplicate_ids,
                                    "non_utf8_rows": rows.non_utf8_rows, "labelled": rows.labelled}
                             for name, rows in splits.items()},
                features=inputs.get("features", ()), label_set=labels,
            )
            if Path(target) != cache_dir:
                owned.swap(cache_dir, manifest)  # the new cache replaces the old one only now, complete
        group.barrier()  # the manifest is written
    manifest = cache.read_manifest(cache_dir)
    log(summary(manifest))
    return manifest


def _resuming(folder, splits, part_rows, fingerprint):
    """What a resumed run continues: the folder, its fingerprint and the parts done per split."""
    done = {name: (len(cache.existing_parts(folder, name)), -(-len(rows) // part_rows))
            for name, rows in splits.items()}
    shown = ", ".join(f"{name} {have} of {total}" for name, (have, total) in done.items())
    return f"cache {folder}: resuming the run with fingerprint {fingerprint[:12]}; parts already embedded: {shown}"


def fingerprint_inputs(config, splits, image_settings):
    """What the cache depends on: content hashes of models, checkpoint and split files, and settings."""
    inputs = {
        "format_version": cache.FINGERPRINT_FORMAT,  # not FORMAT_VERSION: format 4 caches keep format 3's fingerprint
        "text_model": path_sha256(config.text_model),
        "clip_model": path_sha256(config.clip_model),
        "clip_lora": path_sha256(config.clip_lora) if config.clip_lora else None,
        "lora_alpha": config.lora_alpha,
        "splits": {name: path_sha256(rows.path) for name, rows in splits.items()},
        "image_root": str(Path(config.resolved_image_root).resolve()),
        "image_pattern": config.image_pattern,
        "text": {"pooling": config.pooling, "max_length": config.max_length,  # pooling as resolved from auto
                 **_named_family(config.text_model)},
        "image": {**image_settings.record(), "embedding": config.clip_embedding, **_named_image_family(config)},
        "part_rows": config.part_rows,
        "cache_dtype": config.cache_dtype,
        # The thresholds change the cache only when placeholders are left out; otherwise only the counts.
        "placeholders": {"on_placeholder": config.on_placeholder, **({
            "max_bytes": config.placeholder_max_bytes, "min_rows": config.placeholder_min_rows,
            "known": sorted(known.sha256 for known in KNOWN_PLACEHOLDERS),
        } if config.on_placeholder != "embed" else {})},
        # Which half-posts are kept (fail and skip give the same cache).
        "half_posts": {"on_bad_image": "text-only" if config.on_bad_image == "text-only" else "skip",
                       "on_empty_title": config.on_empty_title},
    }
    # Only a same-model pair's fingerprint names the feature: every other cache keeps the fingerprint it had.
    return {**inputs, **similarity_input(config, inputs)}


def _named_image_family(config):
    """The image family, named for every family but CLIP's (whose caches were written before families existed)."""
    family = image_family_of(config.clip_model)
    return {} if family.name == "clip" else {"family": family.name}


def _named_family(text_model):
    """The text family, named in the fingerprint for the two-tower families only. It follows from config.json,
    whose content the text_model hash holds already; naming it for BERT and the other encoders would change the
    fingerprint of every cache written before families existed and force a re-embed for nothing."""
    family = family_of(text_model)
    return {"family": family.name} if family.is_tower_of_two else {}


@contextmanager
def cache_lock(cache_dir):
    """One writer per cache folder; the OS drops the lock if the process dies. The lock file is
    opened without following a symlink and never truncated, so a planted `.lock` link harms nothing."""
    path = Path(cache_dir) / owned.LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise UserError(f"{path}: cannot open the lock file ({error.strerror}; a symlink is never followed); "
                        "remove it or use another --cache-dir") from None
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path}: not a regular file; remove it or use another --cache-dir")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{cache_dir}: another `embed` run is writing this cache; "
                "wait for it to finish or use another --cache-dir"
            ) from None
        yield


def _prepare_cache(cache_dir, fingerprint, inputs, on_stale, log):
    """(state, folder to build in): 'complete', 'resume' or 'fresh' (or refuses a stale or foreign cache).

    A rebuild over a complete cache goes to the staging folder and is swapped in when complete; a
    fresh build is cleared later, by `_start_fresh` once the models have loaded, so that a refused
    model or checkpoint deletes nothing. Only files we wrote are ever removed (`owned.py`).
    """
    finished = owned.staged_manifest(cache_dir)
    if finished is not None:  # a rebuild completed, but its swap was cut short
        log(f"cache {cache_dir}: finishing the replacement of the cache by the rebuilt one")
        owned.swap(cache_dir, finished)
    old = owned.read_fingerprint(cache_dir)
    if old is None:
        owned.refuse_foreign(cache_dir)
        owned.clear_staging(cache_dir)
        return "fresh", cache_dir
    staging = cache_dir / owned.STAGING
    if old["fingerprint"] == fingerprint:
        owned.clear_staging(cache_dir)  # a rebuild for other inputs that never finished
        cache.remove_temp_files(cache_dir)  # from a run that was killed
        if not (cache_dir / cache.MANIFEST_NAME).is_file():
            return "resume", cache_dir
        manifest = cache.read_manifest(cache_dir)
        missing = cache.missing_parts(cache_dir, manifest)
        if not missing:
            return "complete", cache_dir
        log(f"cache {cache_dir}: {len(missing)} part(s) in the manifest are gone "
            f"(e.g. {missing[0]}); embedding them again")
        (cache_dir / cache.MANIFEST_NAME).unlink()
        return "resume", cache_dir
    changed = ", ".join(differences(old.get("inputs", {}), inputs)) or "unknown"
    if on_stale == "refuse":
        raise UserError(
            f"{cache_dir}: cache was built from other inputs (changed: {changed}); use another --cache-dir "
            "to keep this cache and build the new one beside it, or --on-stale rebuild to replace it (the old "
            "cache stays until the new one is complete). Nothing was changed"
        )
    log(f"cache {cache_dir} was built from other inputs (changed: {changed}); rebuilding it")
    if not (cache_dir / cache.MANIFEST_NAME).is_file():
        owned.clear_staging(cache_dir)
        return "fresh", cache_dir  # no complete cache to keep: rebuild in place
    cache.read_manifest(cache_dir)  # a manifest we could not read back is not ours to keep or replace
    staged = owned.read_fingerprint(staging) if staging.is_dir() and not staging.is_symlink() else None
    if staged is not None and staged["fingerprint"] == fingerprint:
        log(f"cache {cache_dir}: resuming the rebuild in {staging}; the old cache stays until it is complete")
        cache.remove_temp_files(staging)
        return "resume", staging
    log(f"cache {cache_dir}: the rebuild goes to {staging}; the old cache stays until it is complete")
    return "fresh", staging


def open_parts_folder(folder, fingerprint, inputs, log=print):
    """Stage one's resume protocol for a folder of parts that never gets a manifest (predict's --cache-dir):
    'resume' when it was started with the same `fingerprint` (a killed run's temp files removed), else
    'fresh': what we wrote there is cleared and the folder starts with `fingerprint` and `inputs`. Call it
    with the folder's lock held."""
    folder = Path(folder)
    if (folder / cache.MANIFEST_NAME).is_file():
        raise UserError(f"{folder}: holds a stage-one cache (manifest.json), not parts of this command; "
                        "give a folder of its own")
    state, target = _prepare_cache(folder, fingerprint, inputs, "rebuild", log)
    if state == "fresh":
        _start_fresh(target, fingerprint, inputs)
    return state


def _start_fresh(folder, fingerprint, inputs):
    """Clear what we wrote in `folder` (the cache, or its staging folder) and start it with the fingerprint."""
    folder = Path(folder)
    if folder.name == owned.STAGING:
        owned.clear_staging(folder.parent)
        folder.mkdir(exist_ok=True)
    else:
        owned.remove_owned(folder)
        for split in folder.iterdir():
            foreign = [p for p in split.iterdir() if owned.PART_NAME.match(p.name)] if split.is_dir() else []
            if foreign:
                raise UserError(f"{foreign[0]}: not a part this tool wrote, where it would write one; "
                                "move it out of the cache folder or use another --cache-dir")
    cache.write_json_atomic(folder / cache.FINGERPRINT_NAME, {"fingerprint": fingerprint, "inputs": inputs})


def embed_split(model, tokenizer, rows, job, image_settings, device, rank=0, world_size=1, skip_rows=None,
                no_image=None):
    """Embed the parts of one split that this rank owns and that are not in `job.folder` yet (a `PartJob`).

    `skip_rows` maps row -> reason for rows left out before loading (placeholders); `no_image` maps
    row -> reason for rows whose image is not to be used (placeholders kept text-only).
    """
    parts = PartWriter(rows, job, model.dims, skip_rows)
    pending = [p for p in parts.pending() if p % world_size == rank]
    collate = Collate(rows.texts, tokenizer, job.max_length, image_settings.size,
                      text_only=job.on_bad_image == "text-only", no_image_rows=set(no_image or ()),
                      image_only=job.on_empty_title == "image-only")
    dataset = ImageRows(job.image_root, rows.image_paths, image_settings, no_image)
    batches = plan_batches([parts.embeddable_rows(p) for p in pending], rows.texts, job.batch_size)
    workers = decode_workers(job.num_workers, device)
    loader = make_loader(dataset, collate, batches, workers, pin_memory=device.type == "cuda")
    total = sum(parts.size(p) for p in pending)
    embedded = 0
    try:
        for part in pending:  # rows skipped before loading (empty titles) may complete a part
            parts.maybe_write(part)
        with tqdm(total=total, desc=f"embed {rows.split}", unit="rows", disable=rank != 0) as bar:
            with torch.inference_mode(), autocast(device):
                embedded = embed_batches(model, loader, rows, job, image_settings, device, parts, bar.update)
    except BaseException:
        parts.abort()
        raise
    parts.close()
    return embedded


def _manifest_config(config, lora_summary, device, timings, placeholders, requested_pooling):
    """Settings and circumstances of this run; `timings` covers embedding only (this run's rows, all ranks)."""
    import transformers

    return {
        "embed": {**asdict(config), "splits": list(config.splits)},  # pooling as resolved
        "pooling": {"requested": requested_pooling, "resolved": config.pooling},
        "text_family": family_of(config.text_model).name,
        "image_family": image_family_of(config.clip_model).name,
        "clip_lora": lora_summary,
        "device": str(device),
        "timings": timings,
        "placeholder_files": placeholders.files,  # the most shared ones
        "versions": {"pipeline": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }


def summary(manifest):
    """Per split: rows read = both + text-only + image-only + skipped (by reason), kept rows per class, notes."""
    names = list(manifest.get("classes", {}).values()) or ["fake", "real"]
    widths = [max(8, len(name)) for name in names]
    lines = [f"{'split':<8} {'read':>8} {'both':>8} {'text-only':>9} {'image-only':>10} {'skipped':>8} "
             + " ".join(f"{name:>{width}}" for name, width in zip(names, widths))
             + "  skipped by reason; missing halves by reason; notes"]
    warnings = []
    for name, info in manifest["splits"].items():
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(info["skipped_by_reason"].items())) or "-"
        halves = ", ".join(f"no {half}: {k}={v}" for half, counts in sorted(info.get("missing_by_reason", {}).items())
                           for k, v in sorted(counts.items()))
        reasons += f"; {halves}" if halves else ""
        notes = "".join(f"; {key}={info[key]}" for key in SPLIT_NOTES if info.get(key))
        classes = info.get("class_counts", {})
        labelled = info.get("labelled", True)
        counts = " ".join(f"{classes.get(label, 0) if labelled else '-':>{width}}"
                          for label, width in zip(names, widths))
        lines.append(f"{name:<8} {info['rows_read']:>8} {info['rows_both']:>8} {info['rows_text_only']:>9} "
                     f"{info['rows_image_only']:>10} {info['rows_skipped']:>8} "
                     f"{counts}  {reasons}{notes}{'' if labelled else '; unlabelled'}")
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
